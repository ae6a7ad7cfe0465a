// agent/restart_policy.h — when a crashed instance is restarted and when it
// is declared failed (a crash loop). Pure: the caller passes the time, so
// tests drive it with any clock.
//
// Rule: an instance is restarted after a crash unless, counting this one,
// more than max_restarts crashes happened within the last window_ms.
// With max_restarts = 5 and a 60 s window the sixth crash within 60 s
// fails it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spare::agent {

struct CrashDecision {
  bool restart = false;
  uint32_t crashes_in_window = 0;  // including this one
};

class RestartPolicy {
 public:
  RestartPolicy(uint32_t max_restarts, uint64_t window_ms)
      : max_restarts_(max_restarts), window_ms_(window_ms) {}

  // Records a crash at now_ms in `history` (wall-clock ms, newest last;
  // entries older than the window are dropped) and decides.
  CrashDecision OnCrash(int64_t now_ms, std::vector<int64_t>& history) const;

  // "crash loop: 6 crashes in 60 s (last: killed by signal 9); fix the
  // cause, then `spare run` it again"
  std::string FailureReason(const CrashDecision& d, const std::string& last_exit) const;

 private:
  uint32_t max_restarts_;
  uint64_t window_ms_;
};

}  // namespace spare::agent
