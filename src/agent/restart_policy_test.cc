#include "agent/restart_policy.h"

#include <gtest/gtest.h>

namespace spare::agent {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // any wall-clock ms

TEST(RestartPolicy, SixthCrashInTheWindowFails) {
  RestartPolicy p(5, 60'000);
  std::vector<int64_t> history;
  for (int i = 1; i <= 5; ++i) {
    CrashDecision d = p.OnCrash(kT0 + i * 1000, history);
    EXPECT_TRUE(d.restart) << "crash " << i;
    EXPECT_EQ(d.crashes_in_window, static_cast<uint32_t>(i));
  }
  CrashDecision d = p.OnCrash(kT0 + 6000, history);
  EXPECT_FALSE(d.restart);
  EXPECT_EQ(d.crashes_in_window, 6u);
  EXPECT_EQ(p.FailureReason(d, "killed by signal 9 (KILL)"),
            "crash loop: 6 crashes in 60 s (last: killed by signal 9 (KILL)); fix the cause, "
            "then `spare run` it again");
}

TEST(RestartPolicy, CrashesOutsideTheWindowAreForgotten) {
  RestartPolicy p(5, 60'000);
  std::vector<int64_t> history;
  // One crash every 15 s: never more than 4 within a minute.
  for (int i = 0; i < 100; ++i) {
    CrashDecision d = p.OnCrash(kT0 + i * 15'000, history);
    ASSERT_TRUE(d.restart) << "crash " << i;
    ASSERT_LE(d.crashes_in_window, 4u);
  }
  EXPECT_LE(history.size(), 6u) << "history must stay bounded";
}

TEST(RestartPolicy, WindowEdge) {
  RestartPolicy p(1, 10'000);
  std::vector<int64_t> history;
  EXPECT_TRUE(p.OnCrash(kT0, history).restart);
  // Exactly one window later the first crash has left the window.
  EXPECT_TRUE(p.OnCrash(kT0 + 10'000, history).restart);
  // 1 ms before the window closes on the second: two in the window.
  EXPECT_FALSE(p.OnCrash(kT0 + 19'999, history).restart);
}

TEST(RestartPolicy, ZeroRestartsFailsAtOnce) {
  RestartPolicy p(0, 60'000);
  std::vector<int64_t> history;
  CrashDecision d = p.OnCrash(kT0, history);
  EXPECT_FALSE(d.restart);
  EXPECT_EQ(p.FailureReason(d, "exit status 1"),
            "crash loop: 1 crash in 60 s (last: exit status 1); fix the cause, then `spare run` "
            "it again");
}

TEST(RestartPolicy, BurstThenQuietThenBurst) {
  RestartPolicy p(3, 1'000);
  std::vector<int64_t> history;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(p.OnCrash(kT0 + i, history).restart);
  // After a quiet second, a new burst gets the full allowance again.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(p.OnCrash(kT0 + 5'000 + i, history).restart);
  EXPECT_FALSE(p.OnCrash(kT0 + 5'003, history).restart);
}

TEST(RestartPolicy, HistoryFromAnEarlierAgentCounts) {
  // crash_times_ms is persisted: a new agent continues the same count.
  RestartPolicy p(2, 60'000);
  std::vector<int64_t> history = {kT0, kT0 + 100};
  EXPECT_FALSE(p.OnCrash(kT0 + 200, history).restart);
}

TEST(RestartPolicy, ClockSteppedBackStillCounts) {
  RestartPolicy p(1, 60'000);
  std::vector<int64_t> history = {kT0 + 5'000};
  EXPECT_FALSE(p.OnCrash(kT0, history).restart);
}

TEST(RestartPolicy, FractionalWindowInReason) {
  RestartPolicy p(0, 1'500);
  std::vector<int64_t> history;
  EXPECT_NE(p.FailureReason(p.OnCrash(kT0, history), "x").find("in 1.5 s"), std::string::npos);
}

}  // namespace
}  // namespace spare::agent
