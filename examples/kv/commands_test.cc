#include "commands.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "verified_region.h"

namespace kv {
namespace {

class FakeInfo : public InfoSource {
 public:
  void AppendInfo(std::string_view section, std::string* out) override {
    if (section == "spare") out->append("epoch:7\r\ndurable_epoch:6\r\n");
  }
};

class CommandsTest : public ::testing::Test {
 protected:
  // The store lives in a declared region under write verification (see
  // store_test.cc): TearDown's commit checks every byte was declared.
  void SetUp() override {
    spare::Status st = region_.Open(kSize);
    ASSERT_TRUE(st.ok()) << st.ToString();
    mem_ = region_.data();
    auto arena = spare::Arena::Open(mem_, kSize);
    ASSERT_TRUE(arena.ok());
    auto store = Store::Open(*arena);
    ASSERT_TRUE(store.ok());
    store_.emplace(std::move(store).value());
    commands_.emplace(&*store_, &info_, CommandsOptions{});
  }
  void TearDown() override {
    spare::Status st = region_.Commit();
    EXPECT_TRUE(st.ok()) << st.ToString();
  }

  std::string Run(std::vector<std::string> args, Session* session = nullptr) {
    std::vector<std::string_view> views(args.begin(), args.end());
    std::string out;
    last_close_ = commands_->Execute(views, now_, &out, session);
    return out;
  }

  static constexpr size_t kSize = 64 << 20;
  VerifiedRegion region_;
  void* mem_ = nullptr;
  FakeInfo info_;
  std::optional<Store> store_;
  std::optional<Commands> commands_;
  int64_t now_ = 1'700'000'000'000;
  bool last_close_ = false;
};

TEST_F(CommandsTest, PingEchoQuit) {
  EXPECT_EQ(Run({"PING"}), "+PONG\r\n");
  EXPECT_EQ(Run({"ping", "hi"}), "$2\r\nhi\r\n");
  EXPECT_EQ(Run({"ping", "a", "b"}), "-ERR wrong number of arguments for 'ping' command\r\n");
  EXPECT_EQ(Run({"ECHO", "x y"}), "$3\r\nx y\r\n");
  EXPECT_FALSE(last_close_);
  EXPECT_EQ(Run({"QUIT"}), "+OK\r\n");
  EXPECT_TRUE(last_close_);
}

TEST_F(CommandsTest, UnknownAndArity) {
  EXPECT_EQ(Run({"FOO", "a", "b"}),
            "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n");
  EXPECT_EQ(Run({"GET"}), "-ERR wrong number of arguments for 'get' command\r\n");
  EXPECT_EQ(Run({"get", "a", "b"}), "-ERR wrong number of arguments for 'get' command\r\n");
  EXPECT_EQ(Run({"averyveryverylongcommandname"}),
            "-ERR unknown command 'averyveryverylongcommandname', with args beginning with: \r\n");
}

TEST_F(CommandsTest, SetGetOptions) {
  EXPECT_EQ(Run({"GET", "k"}), "$-1\r\n");
  EXPECT_EQ(Run({"SET", "k", "v"}), "+OK\r\n");
  EXPECT_EQ(Run({"get", "k"}), "$1\r\nv\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "NX"}), "$-1\r\n");
  EXPECT_EQ(Run({"SET", "k2", "w", "XX"}), "$-1\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "XX", "GET"}), "$1\r\nv\r\n");
  EXPECT_EQ(Run({"SET", "new", "1", "GET"}), "$-1\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "NX", "XX"}), "-ERR syntax error\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "EX"}), "-ERR syntax error\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "EX", "10", "PX", "5"}), "-ERR syntax error\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "EX", "abc"}),
            "-ERR value is not an integer or out of range\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "EX", "0"}), "-ERR invalid expire time in 'set' command\r\n");
  EXPECT_EQ(Run({"SET", "k", "w", "EX", "9223372036854775807"}),
            "-ERR invalid expire time in 'set' command\r\n");
  EXPECT_EQ(Run({"GET", "k"}), "$1\r\nw\r\n");  // failed SETs changed nothing

  EXPECT_EQ(Run({"SET", "t", "v", "EX", "10"}), "+OK\r\n");
  EXPECT_EQ(Run({"TTL", "t"}), ":10\r\n");
  EXPECT_EQ(Run({"SET", "t", "v2", "KEEPTTL"}), "+OK\r\n");
  EXPECT_EQ(Run({"PTTL", "t"}), ":10000\r\n");
  now_ += 10000;
  EXPECT_EQ(Run({"GET", "t"}), "$-1\r\n");
  EXPECT_EQ(Run({"SET", "t", "v", "PXAT", std::to_string(now_ - 1)}), "+OK\r\n");
  EXPECT_EQ(Run({"EXISTS", "t"}), ":0\r\n");
  EXPECT_EQ(Run({"TTL", "k"}), ":-1\r\n");
  EXPECT_EQ(Run({"TTL", "nope"}), ":-2\r\n");
}

TEST_F(CommandsTest, Counters) {
  EXPECT_EQ(Run({"INCR", "n"}), ":1\r\n");
  EXPECT_EQ(Run({"INCRBY", "n", "41"}), ":42\r\n");
  EXPECT_EQ(Run({"DECR", "n"}), ":41\r\n");
  EXPECT_EQ(Run({"DECRBY", "n", "-9"}), ":50\r\n");
  EXPECT_EQ(Run({"GET", "n"}), "$2\r\n50\r\n");
  EXPECT_EQ(Run({"SET", "s", "abc"}), "+OK\r\n");
  EXPECT_EQ(Run({"INCR", "s"}), "-ERR value is not an integer or out of range\r\n");
  EXPECT_EQ(Run({"INCRBY", "n", "1.5"}), "-ERR value is not an integer or out of range\r\n");
  EXPECT_EQ(Run({"SET", "big", "9223372036854775807"}), "+OK\r\n");
  EXPECT_EQ(Run({"INCR", "big"}), "-ERR increment or decrement would overflow\r\n");
  EXPECT_EQ(Run({"DECRBY", "n", "-9223372036854775808"}), "-ERR decrement would overflow\r\n");
  EXPECT_EQ(Run({"SET", "e", "5", "EX", "100"}), "+OK\r\n");
  EXPECT_EQ(Run({"INCR", "e"}), ":6\r\n");
  EXPECT_EQ(Run({"TTL", "e"}), ":100\r\n");  // INCR keeps the TTL
}

TEST_F(CommandsTest, MultiKey) {
  EXPECT_EQ(Run({"MSET", "a", "1", "b", "2"}), "+OK\r\n");
  EXPECT_EQ(Run({"MSET", "a", "1", "b"}), "-ERR wrong number of arguments for 'mset' command\r\n");
  EXPECT_EQ(Run({"MGET", "a", "x", "b"}), "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n");
  EXPECT_EQ(Run({"EXISTS", "a", "a", "x"}), ":2\r\n");
  EXPECT_EQ(Run({"DBSIZE"}), ":2\r\n");
  EXPECT_EQ(Run({"DEL", "a", "x"}), ":1\r\n");
  EXPECT_EQ(Run({"DBSIZE"}), ":1\r\n");
  EXPECT_EQ(Run({"FLUSHALL"}), "+OK\r\n");
  EXPECT_EQ(Run({"DBSIZE"}), ":0\r\n");
  EXPECT_EQ(Run({"EXPIRE", "zz", "10"}), ":0\r\n");
}

TEST_F(CommandsTest, ClientProbes) {
  EXPECT_EQ(Run({"COMMAND", "DOCS"}), "*0\r\n");
  EXPECT_EQ(Run({"CONFIG", "GET", "save"}), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
  EXPECT_EQ(Run({"CONFIG", "GET", "appendonly"}), "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
  EXPECT_EQ(Run({"config", "get", "nothing*"}), "*0\r\n");
  EXPECT_EQ(Run({"SELECT", "0"}), "+OK\r\n");
  EXPECT_EQ(Run({"SELECT", "1"}), "-ERR DB index is out of range\r\n");
  EXPECT_EQ(Run({"CLIENT", "SETNAME", "x"}), "+OK\r\n");
}

TEST_F(CommandsTest, DebugPopulate) {
  EXPECT_EQ(Run({"SET", "key:1", "mine"}), "+OK\r\n");
  EXPECT_EQ(Run({"DEBUG", "POPULATE", "1000"}), "+OK\r\n");
  EXPECT_EQ(Run({"DBSIZE"}), ":1000\r\n");
  EXPECT_EQ(Run({"GET", "key:7"}), "$7\r\nvalue:7\r\n");
  EXPECT_EQ(Run({"GET", "key:1"}), "$4\r\nmine\r\n");  // existing keys are kept
  EXPECT_EQ(Run({"DEBUG", "POPULATE", "10", "p", "12"}), "+OK\r\n");
  EXPECT_EQ(Run({"GET", "p:3"}), std::string("$12\r\nvalue:3\0\0\0\0\0\r\n", 19));
  EXPECT_EQ(Run({"DEBUG", "POPULATE", "-1"}), "-ERR value is out of range, must be positive\r\n");
  EXPECT_EQ(Run({"DEBUG", "SEGFAULT"}).substr(0, 28), "-ERR unknown subcommand 'SEG");
}

TEST_F(CommandsTest, Info) {
  Run({"SET", "a", "1", "EX", "100"});
  std::string all = Run({"INFO"});
  EXPECT_NE(all.find("# Memory\r\nused_memory:"), std::string::npos);
  EXPECT_NE(all.find("db0:keys=1,expires=1,avg_ttl=0"), std::string::npos);
  EXPECT_NE(all.find("# Spare\r\nepoch:7\r\n"), std::string::npos);
  std::string spare = Run({"INFO", "SPARE"});
  EXPECT_EQ(spare.find("# Memory"), std::string::npos);
  EXPECT_NE(spare.find("durable_epoch:6"), std::string::npos);
}

TEST_F(CommandsTest, AuthWithoutUsers) {
  Session s;
  EXPECT_EQ(Run({"GET", "k"}, &s), "$-1\r\n");
  EXPECT_EQ(Run({"AUTH", "pw"}, &s),
            "-ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?\r\n");
  EXPECT_EQ(Run({"AUTH", "default", "anything"}, &s), "+OK\r\n");
  EXPECT_EQ(Run({"AUTH", "bob", "x"}, &s),
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
}

TEST_F(CommandsTest, AuthWithUsers) {
  CommandsOptions o;
  auto users = ParseUsers("user default on >d\nuser alice on >a\nuser bob off >b\n", "u");
  ASSERT_TRUE(users.ok());
  o.users = std::make_shared<Users>(*users);
  commands_.emplace(&*store_, &info_, o);
  Session s;
  const std::string noauth = "-NOAUTH Authentication required.\r\n";
  const std::string wrong = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
  EXPECT_EQ(Run({"PING"}, &s), noauth);
  EXPECT_EQ(Run({"SET", "k", "v"}, &s), noauth);
  EXPECT_EQ(Run({"SET", "k", "v"}), noauth);  // no session: never authenticated
  EXPECT_EQ(Run({"NOPE"}, &s).substr(0, 20), "-ERR unknown command");  // reported first
  EXPECT_EQ(Run({"AUTH"}, &s), "-ERR wrong number of arguments for 'auth' command\r\n");
  EXPECT_EQ(Run({"AUTH", "a", "b", "c"}, &s), "-ERR syntax error\r\n");
  EXPECT_EQ(Run({"AUTH", "a"}, &s), wrong);         // default's password is d
  EXPECT_EQ(Run({"AUTH", "bob", "b"}, &s), wrong);  // off
  EXPECT_EQ(Run({"AUTH", "alice", "d"}, &s), wrong);
  EXPECT_FALSE(s.authenticated);
  EXPECT_EQ(Run({"AUTH", "alice", "a"}, &s), "+OK\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(Run({"SET", "k", "v"}, &s), "+OK\r\n");
  EXPECT_EQ(Run({"AUTH", "alice", "wrong"}, &s), wrong);
  EXPECT_EQ(Run({"GET", "k"}, &s), "$1\r\nv\r\n");  // a failed AUTH keeps the login
  Session t;
  EXPECT_EQ(Run({"AUTH", "d"}, &t), "+OK\r\n");
  EXPECT_EQ(t.user, "default");
  EXPECT_EQ(Run({"QUIT"}, &t), "+OK\r\n");
  Session u;
  EXPECT_EQ(Run({"QUIT"}, &u), "+OK\r\n");  // allowed before AUTH
}

TEST_F(CommandsTest, MaxmemoryRefusesGrowth) {
  CommandsOptions o;
  o.maxmemory = store_->stats().used_bytes + 4096;
  commands_.emplace(&*store_, &info_, o);
  const std::string oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
  std::string value(8192, 'x');
  EXPECT_EQ(Run({"SET", "a", value}), "+OK\r\n");  // under the limit when it started
  EXPECT_EQ(Run({"SET", "b", "1"}), oom);
  EXPECT_EQ(Run({"INCR", "c"}), oom);
  EXPECT_EQ(Run({"MSET", "d", "1"}), oom);
  EXPECT_EQ(Run({"GET", "b"}), "$-1\r\n");
  EXPECT_EQ(Run({"DEL", "a"}), ":1\r\n");  // deletes still work, and free memory
  EXPECT_EQ(Run({"SET", "b", "1"}), "+OK\r\n");
  EXPECT_NE(Run({"CONFIG", "GET", "maxmemory"}).find(std::to_string(o.maxmemory)),
            std::string::npos);
}

}  // namespace
}  // namespace kv
