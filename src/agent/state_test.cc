#include "agent/state.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/files.h"
#include "agent/test_dir.h"

namespace spare::agent {
namespace {

class StateTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.empty()) << "mkdtemp failed"; }

  static AgentStateValue Sample() {
    InstanceRecord a;
    a.spec = {"kv1",
              "local",
              {"./spare-kv", "--port", "7001"},
              {"HOME=/root", "X=a=b"},
              "/srv",
              8,
              16 << 20,
              5,
              60000};
    a.state = InstanceState::kRunning;
    a.pid = 4242;
    a.pid_start_time = 123456789;
    a.generation = 3;
    a.restarts = 2;
    a.crash_times_ms = {1700000000000, 1700000001000};
    a.epoch = 77;
    a.regions = {{"heap", 0, 0x100000000000ULL, 1 << 30}, {"meta", 1, 0x100040000000ULL, 4096}};
    InstanceRecord b;
    b.spec = {"batch", "local", {"/bin/false"}, {}, "/", 4, 1 << 20, 0, 1000};
    b.state = InstanceState::kFailed;
    b.reason =
        "crash loop: 1 crash in 1 s (last: exit status 1); fix the cause, then `spare run` it "
        "again";
    AgentStateValue v;
    v.instances = {a, b};
    return v;
  }

  TestDir tmp_{"spare-state-test"};
  const std::string dir_ = tmp_.path();
  const std::string path_ = dir_ + "/state.json";
};

TEST_F(StateTest, JsonRoundTrip) {
  AgentStateValue v = Sample();
  auto back = StateFromJson(ToJson(v));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back.value(), v);
}

TEST_F(StateTest, FileRoundTrip) {
  AgentStateValue v = Sample();
  ASSERT_TRUE(SaveState(path_, v).ok());
  auto back = LoadState(path_);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_TRUE(back.value().has_value());
  EXPECT_EQ(*back.value(), v);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "state holds environments: owner only";
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
}

TEST_F(StateTest, MissingFileIsNoState) {
  auto back = LoadState(path_);
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back.value().has_value());
}

TEST_F(StateTest, UnknownVersionIsRefused) {
  nlohmann::json j = ToJson(Sample());
  j["version"] = 2;
  auto back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), Code::kUnsupported);
  EXPECT_NE(back.status().message().find("version 2"), std::string::npos)
      << back.status().message();
}

TEST_F(StateTest, MissingVersionIsRefused) {
  nlohmann::json j = ToJson(Sample());
  j.erase("version");
  EXPECT_FALSE(StateFromJson(j).ok());
}

TEST_F(StateTest, BadFieldIsNamed) {
  nlohmann::json j = ToJson(Sample());
  j["instances"][0]["generation"] = "three";
  auto back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("generation"), std::string::npos)
      << back.status().message();
  j = ToJson(Sample());
  j["instances"][1]["state"] = "sleeping";
  back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("sleeping"), std::string::npos);
}

// Ids become paths (DIR/instances/ID) and regions become fixed mappings:
// a state.json that would escape the directory, map outside user space or
// map two regions over each other is refused, naming what is wrong.
TEST_F(StateTest, BadIdsAreRefused) {
  const std::vector<std::string> bad = {"",    ".",      "..",   "/",  "../etc",
                                        "a/b", "a\001b", "a\nb", "-x", std::string(65, 'x')};
  for (const std::string& id : bad) {
    nlohmann::json j = ToJson(Sample());
    j["instances"][0]["spec"]["id"] = id;
    auto back = StateFromJson(j);
    ASSERT_FALSE(back.ok()) << "id \"" << id << "\" accepted";
    EXPECT_EQ(back.status().code(), Code::kInvalidArgument);
    EXPECT_NE(back.status().message().find("instance id"), std::string::npos)
        << back.status().message();
  }
}

TEST_F(StateTest, DuplicateIdsAreRefused) {
  nlohmann::json j = ToJson(Sample());
  j["instances"][1]["spec"]["id"] = "kv1";
  auto back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("kv1 appears twice"), std::string::npos)
      << back.status().message();
}

TEST_F(StateTest, BadRegionGeometryIsRefused) {
  struct Case {
    const char* what;
    uint64_t address, size;
    const char* expect;
  };
  const Case cases[] = {
      {"unaligned address", 0x100040000001ULL, 4096, "page aligned"},
      {"zero address", 0, 4096, "page aligned"},
      {"zero size", 0x100080000000ULL, 0, "non-zero"},
      {"unaligned size", 0x100080000000ULL, 5000, "multiple of the page size"},
      {"past user space", 0x7fff'ffff'0000ULL, 1 << 20, "user space"},
      {"overlap", 0x100000001000ULL, 4096, "overlaps region heap"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = ToJson(Sample());
    j["instances"][0]["regions"][1]["address"] = c.address;
    j["instances"][0]["regions"][1]["size"] = c.size;
    auto back = StateFromJson(j);
    ASSERT_FALSE(back.ok()) << c.what << " accepted";
    EXPECT_EQ(back.status().code(), Code::kInvalidArgument) << c.what;
    EXPECT_NE(back.status().message().find(c.expect), std::string::npos)
        << c.what << ": " << back.status().message();
    EXPECT_NE(back.status().message().find("instance 0"), std::string::npos)
        << back.status().message();
  }
}

TEST_F(StateTest, DuplicateRegionNamesAndIndexesAreRefused) {
  nlohmann::json j = ToJson(Sample());
  j["instances"][0]["regions"][1]["name"] = "heap";
  auto back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("heap appears twice"), std::string::npos)
      << back.status().message();
  j = ToJson(Sample());
  j["instances"][0]["regions"][1]["index"] = 0;
  back = StateFromJson(j);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("index 0 at position 1"), std::string::npos)
      << back.status().message();
}

TEST_F(StateTest, CorruptFileIsAnError) {
  std::ofstream(path_) << "{\"version\": 1, \"instances\": [";
  auto back = LoadState(path_);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find(path_), std::string::npos);
}

// A crash while writing leaves at most a stray .tmp: the previous state
// stays whole and is what the next agent reads.
TEST_F(StateTest, InterruptedWriteKeepsPreviousState) {
  AgentStateValue v = Sample();
  ASSERT_TRUE(SaveState(path_, v).ok());
  std::ofstream(path_ + ".tmp") << "{\"version\": 1, \"inst";  // torn write
  auto back = LoadState(path_);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back.value(), v);
}

// A write that fails (here: the tmp path cannot be created) leaves the
// previous file untouched.
TEST_F(StateTest, FailedWriteKeepsPreviousState) {
  AgentStateValue v = Sample();
  ASSERT_TRUE(SaveState(path_, v).ok());
  std::filesystem::create_directory(path_ + ".tmp");
  AgentStateValue w;
  EXPECT_FALSE(SaveState(path_, w).ok());
  auto back = LoadState(path_);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back.value(), v);
}

TEST(StateNames, RoundTrip) {
  for (auto s : {InstanceState::kStarting, InstanceState::kRunning, InstanceState::kRestarting,
                 InstanceState::kAdopting, InstanceState::kStopping, InstanceState::kStopped,
                 InstanceState::kExited, InstanceState::kFailed})
    EXPECT_EQ(StateFromName(StateName(s)), s);
  EXPECT_FALSE(StateFromName("bogus").has_value());
}

}  // namespace
}  // namespace spare::agent
