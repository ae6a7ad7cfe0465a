// Tests of spare-kv's --config and --users parsers and their blobs.
#include "config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "checkpoint.h"
#include "conf_text.h"
#include "users.h"

namespace kv {
namespace {

std::string ErrorOf(std::string_view text) {
  auto c = ParseConfig(text, "kv.conf");
  EXPECT_FALSE(c.ok()) << text;
  return c.ok() ? std::string() : c.status().message();
}

std::string UsersErrorOf(std::string_view text) {
  auto u = ParseUsers(text, "users.acl");
  EXPECT_FALSE(u.ok()) << text;
  return u.ok() ? std::string() : u.status().message();
}

TEST(ConfText, SplitsLikeRedisConf) {
  auto a = SplitConfigLine("  requirepass \"a b\\\"c\" 'd e' f  ");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, (std::vector<std::string>{"requirepass", "a b\"c", "d e", "f"}));
  EXPECT_TRUE(SplitConfigLine("   # a comment")->empty());
  EXPECT_TRUE(SplitConfigLine("\r")->empty());
  EXPECT_EQ(SplitConfigLine("x \"open").status().message(), "unbalanced quotes");
  EXPECT_FALSE(SplitConfigLine("x \"a\"b").ok());
}

TEST(ConfText, Bytes) {
  uint64_t v = 0;
  EXPECT_TRUE(ParseBytes("100", UINT64_MAX, &v));
  EXPECT_EQ(v, 100u);
  EXPECT_TRUE(ParseBytes("1k", UINT64_MAX, &v));
  EXPECT_EQ(v, 1000u);
  EXPECT_TRUE(ParseBytes("2KB", UINT64_MAX, &v));
  EXPECT_EQ(v, 2048u);
  EXPECT_TRUE(ParseBytes("3gb", UINT64_MAX, &v));
  EXPECT_EQ(v, uint64_t{3} << 30);
  EXPECT_FALSE(ParseBytes("", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("mb", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("1tb", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("-1", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("1.5mb", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("99999999999999999999", UINT64_MAX, &v));
  EXPECT_FALSE(ParseBytes("20000000000gb", UINT64_MAX, &v));  // overflows
  EXPECT_FALSE(ParseBytes("2kb", 2047, &v));
}

TEST(Config, ParsesEveryDirective) {
  auto c = ParseConfig(
      "# spare-kv\n"
      "maxclients 50\n"
      "\n"
      "HZ 20\r\n"
      "  maxmemory 64mb\n"
      "maxmemory-policy NoEviction\n"
      "proto-max-bulk-len 1mb\n"
      "client-query-buffer-limit 2mb\n"
      "requirepass \"s3cret pass\"\n"
      "maxclients 60",  // the last one wins; no final newline
      "kv.conf");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->maxclients, 60u);
  EXPECT_EQ(c->hz, 20u);
  EXPECT_EQ(c->maxmemory, uint64_t{64} << 20);
  EXPECT_EQ(c->proto_max_bulk_len, uint64_t{1} << 20);
  EXPECT_EQ(c->client_query_buffer_limit, uint64_t{2} << 20);
  EXPECT_EQ(c->requirepass, "s3cret pass");
  EXPECT_EQ(c->directives, 8u);
  auto empty = ParseConfig("", "kv.conf");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, KvConfig{});
}

TEST(Config, EachErrorNamesFileLineAndDirective) {
  EXPECT_EQ(ErrorOf("maxclients 5\nbogus 1\n"),
            "kv.conf:2: unknown directive 'bogus' (spare-kv knows maxclients, hz, maxmemory, "
            "maxmemory-policy, proto-max-bulk-len, client-query-buffer-limit, requirepass)");
  EXPECT_EQ(ErrorOf("# c\n\nmaxclients abc\n"),
            "kv.conf:3: 'maxclients' wants an integer from 1 to 1000000, got 'abc'");
  EXPECT_EQ(ErrorOf("maxclients 0"),
            "kv.conf:1: 'maxclients' wants an integer from 1 to 1000000, got '0'");
  EXPECT_EQ(ErrorOf("hz 501"), "kv.conf:1: 'hz' wants an integer from 1 to 500, got '501'");
  EXPECT_EQ(ErrorOf("hz\n"), "kv.conf:1: 'hz' takes exactly one argument, got 0");
  EXPECT_EQ(ErrorOf("\nmaxmemory 1 gb\n"),
            "kv.conf:2: 'maxmemory' takes exactly one argument, got 2");
  EXPECT_EQ(ErrorOf("maxmemory 12xb"),
            "kv.conf:1: 'maxmemory' wants a byte count (100, 1kb, 64mb, 2gb; 0 = no limit), got "
            "'12xb'");
  EXPECT_EQ(ErrorOf("proto-max-bulk-len 513mb"),
            "kv.conf:1: 'proto-max-bulk-len' wants a byte count from 1 to 536870912 (units k kb "
            "m mb g gb), got '513mb'");
  EXPECT_NE(
      ErrorOf("client-query-buffer-limit 1000").find("kv.conf:1: 'client-query-buffer-limit'"),
      std::string::npos);
  EXPECT_EQ(ErrorOf("maxmemory-policy allkeys-lru"),
            "kv.conf:1: 'maxmemory-policy' 'allkeys-lru' is not supported: spare-kv only has "
            "noeviction");
  EXPECT_EQ(ErrorOf("requirepass \"open"), "kv.conf:1: unbalanced quotes");
  EXPECT_EQ(ErrorOf("requirepass " + std::string(513, 'x')),
            "kv.conf:1: 'requirepass' password longer than 512 bytes");
}

TEST(Config, BlobRoundTripsAndRejectsGarbage) {
  auto c = ParseConfig("maxclients 7\nmaxmemory 0\nrequirepass ''\n", "kv.conf");
  ASSERT_TRUE(c.ok());
  auto back = DecodeConfig(EncodeConfig(*c));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, *c);
  EXPECT_EQ(back->requirepass, "");
  const std::string blob = EncodeConfig(*c);
  EXPECT_FALSE(DecodeConfig("").ok());
  EXPECT_FALSE(DecodeConfig(blob.substr(0, blob.size() - 1)).ok());
  EXPECT_FALSE(DecodeConfig(blob + "x").ok());
  EXPECT_FALSE(DecodeConfig(EncodeUsers(Users{})).ok());
}

TEST(Users, ParsesRules) {
  auto u = ParseUsers(
      "# users\n"
      "user default on >pw1 >pw2 <pw1 ~* &* +@all\n"
      "user alice on >a1 allkeys allchannels allcommands\n"
      "user bob off >b1\n"
      "user guest on nopass\n"
      "user carol on >c1 resetpass >c2\n"
      "user dave on >d1 reset on\n"
      "user eve\n",
      "users.acl");
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  ASSERT_EQ(u->users.size(), 7u);
  EXPECT_TRUE(u->Check("default", "pw2"));
  EXPECT_FALSE(u->Check("default", "pw1"));
  EXPECT_TRUE(u->Check("alice", "a1"));
  EXPECT_FALSE(u->Check("alice", "a"));
  EXPECT_FALSE(u->Check("alice", "a1x"));
  EXPECT_FALSE(u->Check("alice", ""));
  EXPECT_FALSE(u->Check("bob", "b1"));  // off
  EXPECT_TRUE(u->Check("guest", "anything"));
  EXPECT_FALSE(u->Check("carol", "c1"));
  EXPECT_TRUE(u->Check("carol", "c2"));
  EXPECT_FALSE(u->Check("dave", "d1"));  // reset dropped the password
  EXPECT_FALSE(u->Check("eve", ""));     // off unless on, no password
  EXPECT_FALSE(u->Check("nobody", "x"));
}

TEST(Users, EachErrorNamesFileAndLine) {
  EXPECT_EQ(UsersErrorOf("user a on >x\nuser a on >y\n"),
            "users.acl:2: user 'a' is already defined on line 1");
  EXPECT_EQ(UsersErrorOf("\n\nalice on >x\n"),
            "users.acl:3: expected 'user NAME RULE...', got 'alice'");
  EXPECT_EQ(UsersErrorOf("user\n"), "users.acl:1: 'user' needs a user name");
  EXPECT_EQ(UsersErrorOf("user a on >x\nuser b on maybe\n"),
            "users.acl:2: user 'b': unknown rule 'maybe'");
  EXPECT_EQ(UsersErrorOf("user a on ~cache:* >x\n"),
            "users.acl:1: user 'a': rule '~cache:*' restricts keys or commands, which spare-kv "
            "does not support (only ~* &* +@all allkeys allchannels allcommands)");
  EXPECT_NE(
      UsersErrorOf("user a on -@dangerous\n").find("users.acl:1: user 'a': rule '-@dangerous'"),
      std::string::npos);
  EXPECT_EQ(UsersErrorOf("user a on #5e884898da\n"),
            "users.acl:1: user 'a': hashed passwords ('#...') are not supported; write "
            "'>password'");
  EXPECT_EQ(UsersErrorOf("user a on <nope\n"),
            "users.acl:1: user 'a': rule '<...' removes a password it does not have");
  EXPECT_EQ(UsersErrorOf("user a on \">x\n"), "users.acl:1: unbalanced quotes");
}

TEST(Users, BlobRoundTripsAndRejectsGarbage) {
  auto u = ParseUsers("user default on >p\nuser x off nopass\nuser y on >1 >2\n", "users.acl");
  ASSERT_TRUE(u.ok());
  const std::string blob = EncodeUsers(*u);
  auto back = DecodeUsers(blob);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, *u);
  for (size_t cut = 0; cut < blob.size(); ++cut) {
    EXPECT_FALSE(DecodeUsers(blob.substr(0, cut)).ok()) << cut;
  }
  EXPECT_FALSE(DecodeUsers(blob + std::string(1, '\0')).ok());
  EXPECT_FALSE(DecodeUsers(EncodeConfig(KvConfig{})).ok());
}

TEST(Checkpoint, FingerprintDependsOnKeyAndBytes) {
  EXPECT_EQ(ConfigFingerprint("config", "hz 10\n"), ConfigFingerprint("config", "hz 10\n"));
  EXPECT_NE(ConfigFingerprint("config", "hz 10\n"), ConfigFingerprint("config", "hz 11\n"));
  EXPECT_NE(ConfigFingerprint("config", "x"), ConfigFingerprint("users", "x"));
}

TEST(Checkpoint, UnprotectedJustParses) {
  char dir[] = "/tmp/kv-config-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string conf = std::string(dir) + "/kv.conf", users = std::string(dir) + "/users.acl";
  FILE* f = std::fopen(conf.c_str(), "w");
  std::fputs("maxclients 3\n", f);
  std::fclose(f);
  f = std::fopen(users.c_str(), "w");
  std::fputs("user default on >pw\n", f);
  std::fclose(f);
  auto rt = spare::Runtime::Unprotected();
  ASSERT_TRUE(rt.ok());
  auto loaded = LoadCheckpointedFiles(*rt, conf, users);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config->maxclients, 3u);
  EXPECT_TRUE(loaded->users->Check("default", "pw"));
  ASSERT_EQ(loaded->reports.size(), 2u);
  EXPECT_EQ(loaded->reports[0].state, "off");
  EXPECT_EQ(loaded->reports[1].key, "users");
  EXPECT_FALSE(loaded->reports[1].saved);

  f = std::fopen(conf.c_str(), "w");
  std::fputs("requirepass x\n", f);
  std::fclose(f);
  auto both = LoadCheckpointedFiles(*rt, conf, users);
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("sets requirepass and --users"), std::string::npos);
  auto missing = LoadCheckpointedFiles(*rt, std::string(dir) + "/nope.conf", "");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "--config " + std::string(dir) + "/nope.conf: No such file or directory");
  unlink(conf.c_str());
  unlink(users.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace kv
