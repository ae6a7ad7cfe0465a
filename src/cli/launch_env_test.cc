#include "cli/launch_env.h"

#include <gtest/gtest.h>

namespace spare::cli {
namespace {

const char* const kCaller[] = {"PATH=/usr/bin:/bin",
                               "HOME=/home/op",
                               "LANG=C.UTF-8",
                               "LC_TIME=en_GB.UTF-8",
                               "TZ=UTC",
                               "SPARE_TRACKER=mprotect",
                               "AWS_SECRET_ACCESS_KEY=hunter2",
                               "GITHUB_TOKEN=ghp_x",
                               "EDITOR=vi",
                               "ODD=a=b",
                               nullptr};

// The caller's secrets stay with the caller: only the default list goes.
TEST(LaunchEnvironment, PassesOnlyWhatTheInstanceNeeds) {
  auto env = LaunchEnvironment(kCaller, {}, {});
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  const nlohmann::json want = {
      {"PATH", "/usr/bin:/bin"},  {"HOME", "/home/op"}, {"LANG", "C.UTF-8"},
      {"LC_TIME", "en_GB.UTF-8"}, {"TZ", "UTC"},        {"SPARE_TRACKER", "mprotect"}};
  EXPECT_EQ(*env, want);
}

TEST(LaunchEnvironment, ExplicitVariables) {
  auto env =
      LaunchEnvironment(kCaller, {"PORT=7001", "TZ=Europe/Paris", "EMPTY="}, {"EDITOR", "ODD"});
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ((*env)["PORT"], "7001");
  EXPECT_EQ((*env)["TZ"], "Europe/Paris") << "--env overrides the inherited value";
  EXPECT_EQ((*env)["EMPTY"], "");
  EXPECT_EQ((*env)["EDITOR"], "vi");
  EXPECT_EQ((*env)["ODD"], "a=b");
  EXPECT_FALSE(env->contains("GITHUB_TOKEN"));
}

TEST(LaunchEnvironment, BadFlagsAreNamed) {
  struct Case {
    std::vector<std::string> set, inherit;
    const char* expect;
  };
  const Case cases[] = {{{"NOVALUE"}, {}, "--env \"NOVALUE\": expected NAME=VALUE"},
                        {{"=x"}, {}, "variable name is empty"},
                        {{}, {"UNSET_HERE"}, "UNSET_HERE is not set"},
                        {{}, {"A=B"}, "holds '='"}};
  for (const Case& c : cases) {
    auto env = LaunchEnvironment(kCaller, c.set, c.inherit);
    ASSERT_FALSE(env.ok()) << c.expect;
    EXPECT_EQ(env.status().code(), Code::kInvalidArgument);
    EXPECT_NE(env.status().message().find(c.expect), std::string::npos) << env.status().ToString();
  }
}

}  // namespace
}  // namespace spare::cli
