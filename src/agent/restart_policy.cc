#include "agent/restart_policy.h"

#include <algorithm>
#include <cstdio>

namespace spare::agent {

CrashDecision RestartPolicy::OnCrash(int64_t now_ms, std::vector<int64_t>& history) const {
  history.push_back(now_ms);
  // A window reaching back further than now (clock stepped back, or a
  // window longer than the epoch) keeps everything.
  int64_t window = static_cast<int64_t>(std::min<uint64_t>(window_ms_, INT64_MAX / 2));
  int64_t oldest = now_ms - window;
  std::erase_if(history, [&](int64_t t) { return t <= oldest; });
  // Nothing older than the window matters, and only max_restarts + 1
  // entries can decide: keep the list bounded.
  size_t keep = static_cast<size_t>(max_restarts_) + 1;
  if (history.size() > keep) history.erase(history.begin(), history.end() - keep);
  CrashDecision d;
  d.crashes_in_window = static_cast<uint32_t>(history.size());
  d.restart = d.crashes_in_window <= max_restarts_;
  return d;
}

std::string RestartPolicy::FailureReason(const CrashDecision& d,
                                         const std::string& last_exit) const {
  char window[32];
  if (window_ms_ % 1000 == 0)
    std::snprintf(window, sizeof(window), "%llu s",
                  static_cast<unsigned long long>(window_ms_ / 1000));
  else
    std::snprintf(window, sizeof(window), "%.1f s", static_cast<double>(window_ms_) / 1000.0);
  return "crash loop: " + std::to_string(d.crashes_in_window) + " crash" +
         (d.crashes_in_window == 1 ? "" : "es") + " in " + window + " (last: " + last_exit +
         "); fix the cause, then `spare run` it again";
}

}  // namespace spare::agent
