#include "agent/config_store.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "agent/test_dir.h"

namespace spare::agent {
namespace {

class ConfigStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(root_.empty()) << "mkdtemp failed"; }

  ConfigValue Get(const ConfigStore& s, std::string_view key, uint64_t fp) {
    auto r = s.Get(key, fp);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r.value() : ConfigValue{};
  }

  TestDir tmp_{"spare-config-test"};
  const std::string root_ = tmp_.path();
  const std::string dir_ = root_ + "/instances/kv1/config";
};

TEST_F(ConfigStoreTest, HitStaleMissing) {
  ConfigStore store(dir_);
  EXPECT_EQ(Get(store, "topology", 1).state, ConfigHit::kMissing);
  ASSERT_TRUE(store.Put("topology", 0xfeedULL, "three shards").ok());
  ConfigValue hit = Get(store, "topology", 0xfeedULL);
  EXPECT_EQ(hit.state, ConfigHit::kHit);
  EXPECT_EQ(hit.blob, "three shards");
  ConfigValue stale = Get(store, "topology", 0xbeefULL);
  EXPECT_EQ(stale.state, ConfigHit::kStale);
  EXPECT_TRUE(stale.blob.empty());
  EXPECT_EQ(Get(store, "other", 0xfeedULL).state, ConfigHit::kMissing);
}

TEST_F(ConfigStoreTest, SurvivesANewStore) {
  ASSERT_TRUE(ConfigStore(dir_).Put("k", UINT64_MAX, std::string("\0binary\xff", 8)).ok());
  ConfigValue v = Get(ConfigStore(dir_), "k", UINT64_MAX);
  EXPECT_EQ(v.state, ConfigHit::kHit);
  EXPECT_EQ(v.blob, std::string("\0binary\xff", 8));
}

TEST_F(ConfigStoreTest, PutReplaces) {
  ConfigStore store(dir_);
  ASSERT_TRUE(store.Put("k", 1, "old").ok());
  ASSERT_TRUE(store.Put("k", 2, "new").ok());
  EXPECT_EQ(Get(store, "k", 1).state, ConfigHit::kStale);
  EXPECT_EQ(Get(store, "k", 2).blob, "new");
}

TEST_F(ConfigStoreTest, CorruptFileReadsAsMissing) {
  ConfigStore store(dir_);
  ASSERT_TRUE(store.Put("k", 9, "value bytes").ok());
  std::string path = store.PathOf("k");
  {  // flip one byte of the value: the checksum no longer matches
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(33);
    f.put('X');
  }
  EXPECT_EQ(Get(store, "k", 9).state, ConfigHit::kMissing);
  std::filesystem::resize_file(path, 10);  // truncated below the header
  EXPECT_EQ(Get(store, "k", 9).state, ConfigHit::kMissing);
  std::ofstream(path, std::ios::trunc) << "not a checkpoint at all, but long enough to parse";
  EXPECT_EQ(Get(store, "k", 9).state, ConfigHit::kMissing);
  ASSERT_TRUE(store.Put("k", 9, "again").ok());  // and it heals on the next save
  EXPECT_EQ(Get(store, "k", 9).blob, "again");
}

TEST_F(ConfigStoreTest, KeysCannotEscapeTheDirectory) {
  ConfigStore store(dir_);
  ASSERT_TRUE(store.Put("../../evil", 1, "x").ok());
  ASSERT_TRUE(store.Put("a/b", 1, "y").ok());
  ASSERT_TRUE(store.Put(".hidden", 1, "z").ok());
  for (const auto& e : std::filesystem::directory_iterator(dir_))
    EXPECT_TRUE(e.is_regular_file()) << e.path();
  EXPECT_FALSE(std::filesystem::exists(root_ + "/instances/evil"));
  EXPECT_EQ(Get(store, "../../evil", 1).blob, "x");
  EXPECT_EQ(Get(store, "a/b", 1).blob, "y");
  EXPECT_EQ(store.PathOf("a/b"), dir_ + "/a%2Fb");
}

TEST_F(ConfigStoreTest, BadKeysAndValues) {
  ConfigStore store(dir_);
  EXPECT_EQ(store.Put("", 1, "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(store.Put(std::string(300, 'k'), 1, "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(store.Put("k", 1, std::string(kMaxConfigBlob + 1, 'v')).code(), Code::kInvalidArgument);
  EXPECT_FALSE(store.Get("", 1).ok());
}

// 200 bytes is within kMaxConfigKey, but each '/' escapes to "%2F": the
// file name would be 600 bytes, past NAME_MAX. Refused up front with a
// message saying why, for Put and Get alike, and nothing is created.
TEST_F(ConfigStoreTest, KeysWhoseFileNameIsTooLongAreRefused) {
  ConfigStore store(dir_ + "/config");
  const std::string key(200, '/');
  Status st = store.Put(key, 1, "x");
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("escapes to a 600-byte file name"), std::string::npos)
      << st.ToString();
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/config")) << "refused before touching the disk";
  auto got = store.Get(key, 1);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kInvalidArgument);
  // The longest plain key and an escaped one that just fits still work.
  ASSERT_TRUE(store.Put(std::string(200, 'k'), 1, "plain").ok());
  const std::string fits = std::string(83, '/') + "k";  // 249 + 1 + ".tmp" = 254
  ASSERT_TRUE(store.Put(fits, 1, "escaped").ok()) << store.Put(fits, 1, "escaped").ToString();
  EXPECT_EQ(Get(store, fits, 1).blob, "escaped");
}

}  // namespace
}  // namespace spare::agent
