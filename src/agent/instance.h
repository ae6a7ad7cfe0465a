// agent/instance.h — the agent's live view of one instance.
//
// An Instance is its persisted record (agent/state.h) plus the resources
// the agent holds for it: the pidfd of its process, the staging memfd and
// its mapping, and the committed images (one memfd per region). The agent
// owns every fd here; an instance gets duplicates over the socket.
//
// The committed image survives crashes of the instance (it lives in the
// agent) but not the agent: after an agent restart it comes back only
// when the live instance hands its fds over again (Attach with reattach).
//
// Threading: the agent's loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/state.h"
#include "common/fd.h"
#include "epoch/staging.h"
#include "spare/status.h"

namespace spare::agent {

using SteadyTime = std::chrono::steady_clock::time_point;

// A connection as instances refer to it: fd plus a serial number, so a
// reused fd number never reaches the wrong peer.
struct ConnRef {
  int fd = -1;
  uint64_t serial = 0;
  bool valid() const { return fd >= 0; }
  bool operator==(const ConnRef&) const = default;
};

// The staging memfd and the agent's MAP_SHARED mapping of it.
class StagingArea {
 public:
  StagingArea() = default;
  StagingArea(StagingArea&& o) noexcept { *this = std::move(o); }
  StagingArea& operator=(StagingArea&& o) noexcept;
  ~StagingArea() { Reset(); }

  // A fresh area: CreateMemfd + MapShared + InitStaging.
  static Result<StagingArea> Create(const std::string& id, uint32_t slot_count, uint64_t slot_size);
  // An area handed back by a live instance (reattach): checks its size and
  // header before trusting it.
  static Result<StagingArea> Adopt(UniqueFd fd);

  bool valid() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  const epoch::StagingView& view() const { return view_; }
  void Reset();

 private:
  UniqueFd fd_;
  epoch::StagingView view_;
};

struct Instance {
  InstanceRecord rec;

  // Process.
  UniqueFd pidfd;
  uint64_t pidfd_watch = 0;  // the agent's epoll token for pidfd
  bool is_child = false;     // launched by this agent (waitid can reap it)
  SteadyTime launched_at{};

  // Committed image; held when staging.valid().
  StagingArea staging;
  std::vector<UniqueFd> region_fds;  // parallel to rec.regions
  std::string record;                // record of rec.epoch

  // Who is talking to us about it.
  ConnRef conn;                       // the attached instance's socket
  ConnRef pending_run;                // `spare run` waiting for the attach
  std::vector<ConnRef> stop_waiters;  // `spare stop` waiting for the exit
  std::optional<SteadyTime> kill_at;  // SIGKILL deadline while stopping
  SteadyTime stop_started_at{};

  // Observations (not persisted).
  std::string tracker;
  uint64_t epochs_applied = 0;
  uint64_t bytes_applied = 0;
  double apply_seconds = 0;
  std::optional<SteadyTime> crash_detected_at;
  std::optional<double> last_restart_ms;
  std::string last_exit;  // ExitInfo::Describe() of the last exit
  // Configuration checkpoint lookups (ConfigGet) answered for it by this
  // agent, and the keys whose last lookup found them stale.
  uint64_t config_hits = 0;
  uint64_t config_stale = 0;
  uint64_t config_missing = 0;
  std::vector<std::string> config_stale_keys;  // sorted

  bool image_held() const { return staging.valid(); }
  // Drops the committed image (stop, or a re-run that starts fresh).
  void ReleaseImage();
};

}  // namespace spare::agent
