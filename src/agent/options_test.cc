#include "agent/options.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "agent/test_dir.h"

namespace spare::agent {
namespace {

class OptionsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.empty()) << "mkdtemp failed"; }

  Status Load(const std::string& text, AgentOptions* o) {
    std::string path = dir_ + "/agent.toml";
    std::ofstream(path) << text;
    return LoadAgentConfig(path, o);
  }

  TestDir tmp_{"spare-options-test"};
  const std::string dir_ = tmp_.path();
};

TEST_F(OptionsTest, DefaultsAndOverrides) {
  AgentOptions o;
  EXPECT_EQ(o.slot_count, 8u);
  EXPECT_EQ(o.slot_size, 16u << 20);
  EXPECT_EQ(o.max_restarts, 5u);
  EXPECT_EQ(o.restart_window_s, 60u);
  ASSERT_TRUE(Load("slot_count = 4\nslot_size = \"2MiB\"\nmax_restarts = 0\n"
                   "restart_window_s = 10\nmetrics_port = 9464\n",
                   &o)
                  .ok());
  EXPECT_EQ(o.slot_count, 4u);
  EXPECT_EQ(o.slot_size, 2u << 20);
  EXPECT_EQ(o.max_restarts, 0u);
  EXPECT_EQ(o.restart_window_s, 10u);
  EXPECT_EQ(o.metrics_port, 9464);
}

TEST_F(OptionsTest, ErrorsNameTheKey) {
  struct Case {
    const char* text;
    const char* key;
  } cases[] = {
      {"staging_slots = \"many\"\n", "staging_slots"}, {"slot_count = 0\n", "slot_count"},
      {"slot_count = \"eight\"\n", "slot_count"},      {"slot_size = 1000\n", "slot_size"},
      {"slot_size = \"lots\"\n", "slot_size"},         {"max_restarts = -1\n", "max_restarts"},
      {"restart_window_s = 0\n", "restart_window_s"},  {"metrics_port = 70000\n", "metrics_port"},
  };
  for (const Case& c : cases) {
    AgentOptions o;
    Status st = Load(c.text, &o);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << c.text;
    EXPECT_NE(st.message().find(c.key), std::string::npos) << st.message();
  }
}

TEST_F(OptionsTest, SyntaxErrorNamesTheLine) {
  AgentOptions o;
  Status st = Load("slot_count = 4\nslot_size = = 3\n", &o);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("line 2"), std::string::npos) << st.message();
}

TEST(ParseBytes, Units) {
  EXPECT_EQ(ParseBytes("4096").value(), 4096u);
  EXPECT_EQ(ParseBytes("64KiB").value(), 64u << 10);
  EXPECT_EQ(ParseBytes("16M").value(), 16u << 20);
  EXPECT_EQ(ParseBytes("1g").value(), 1u << 30);
  EXPECT_FALSE(ParseBytes("").ok());
  EXPECT_FALSE(ParseBytes("12 parsecs").ok());
  EXPECT_FALSE(ParseBytes("MiB").ok());
  EXPECT_FALSE(ParseBytes("99999999999999999999").ok());
  EXPECT_FALSE(ParseBytes("17179869184GiB").ok());
}

TEST_F(OptionsTest, MetricsHost) {
  AgentOptions o;
  EXPECT_EQ(o.metrics_host, "127.0.0.1");
  ASSERT_TRUE(Load("metrics_host = \"0.0.0.0\"\n", &o).ok());
  EXPECT_EQ(o.metrics_host, "0.0.0.0");
  Status st = Load("metrics_host = \"example.com\"\n", &o);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("metrics_host \"example.com\" is not an IPv4 address"),
            std::string::npos)
      << st.ToString();
  EXPECT_FALSE(Load("metrics_host = 7\n", &o).ok());
}

}  // namespace
}  // namespace spare::agent
