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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/epoch_queue.h"
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

// The staging memfd and the agent's MAP_SHARED mapping of it. The mapping
// is reference counted: an apply running on the agent's worker thread holds
// a Share() of it, so releasing the image on the loop (stop, failure) never
// unmaps memory a job is still reading.
class StagingArea {
 public:
  struct Mapping {
    UniqueFd fd;
    epoch::StagingView view;
    ~Mapping();
  };

  // A fresh area: CreateMemfd (sealed against resizing) + MapShared +
  // InitStaging.
  static Result<StagingArea> Create(const std::string& id, uint32_t slot_count, uint64_t slot_size);
  // An area handed back by a live instance (reattach): checks its seals,
  // size and header before trusting it.
  static Result<StagingArea> Adopt(UniqueFd fd);

  bool valid() const { return m_ != nullptr; }
  int fd() const { return m_ ? m_->fd.get() : -1; }
  const epoch::StagingView& view() const { return m_ ? m_->view : kNoView; }
  std::shared_ptr<const Mapping> Share() const { return m_; }
  void Reset() { m_.reset(); }

 private:
  static const epoch::StagingView kNoView;
  std::shared_ptr<Mapping> m_;
};

// Where the apply worker has brought one committed image. Created by the
// loop when an image is made or adopted (no apply in flight then); from
// then on only the apply worker reads or writes it (agent/apply.cc).
struct ApplyChain {
  ApplyChain() = default;
  ApplyChain(const ApplyChain&) = delete;
  ApplyChain& operator=(const ApplyChain&) = delete;
  ~ApplyChain();  // unmaps `maps`

  uint64_t epoch = 0;  // newest epoch wholly written into the image
  bool torn = false;   // a write failed for good: the image is between epochs
  // The image's region memfds mapped MAP_SHARED, by the apply worker on
  // first use (only it touches them): an epoch of many small declared
  // ranges is copied in, not written with one pwrite(2) per range. They
  // live as long as the image: a new chain for the same image (a restart)
  // takes them over, since unmapping gigabytes costs ~90 ns a page (235 ms
  // for 4 GiB here); MapImages remaps one whose file is not the target's.
  struct Map {
    std::byte* base = nullptr;
    size_t size = 0;
    uint64_t dev = 0, ino = 0;  // the memfd it maps
  };
  std::vector<Map> maps;
};

// A failing exit this soon after its launch counts toward the relaunch
// backoff (Instance::fast_crashes).
inline constexpr std::chrono::milliseconds kFastCrash{1000};

struct Instance {
  InstanceRecord rec;

  // Process.
  UniqueFd pidfd;
  uint64_t pidfd_watch = 0;  // the agent's epoll token for pidfd
  bool is_child = false;     // launched by this agent (waitid can reap it)
  SteadyTime launched_at{};

  // Committed image; held when staging.valid().
  StagingArea staging;
  std::vector<UniqueFd> region_fds;   // parallel to rec.regions
  std::string record;                 // record of rec.epoch
  uint64_t image_serial = 0;          // bumped when the image is made, adopted or released
  std::shared_ptr<ApplyChain> chain;  // the apply worker's view of this image

  // Epochs handed over and not yet durable (Commit → Released → Durable).
  EpochQueue epochs;
  uint64_t sent_released = 0, sent_durable = 0;  // last numbers sent to the instance
  uint32_t applies_in_flight = 0;  // posted to the apply worker, completion not yet seen
  bool relaunch_pending = false;   // crashed; relaunch once in-flight applies are done
  // Exits with a failure status within kFastCrash of their launch, in a
  // row (a start that fails): from the second on, the relaunch waits 10 ms
  // doubling (to 1 s), so that a cause that passes in a moment (the last
  // generation's port not yet released: a replacement that fails over in
  // 3 ms can beat the old process's exit) does not use up the crash budget
  // in a few ms. A kill or a crash by a signal, or an exit after a longer
  // run, relaunches at once (restart time is what spare promises).
  uint32_t fast_crashes = 0;
  bool exited_failing = false;  // the last end was an exit with status != 0
  std::optional<SteadyTime> relaunch_at;
  uint32_t crashes_in_window = 0;  // of the last crash, for the relaunch log line

  // Hot protection (hot_link.cc): the standby's area for this instance.
  struct Ship {
    uint64_t epoch;
    uint32_t first_slot, parts;
  };
  uint64_t standby_handle = 0;         // 0: not reserved (yet)
  bool standby_reserving = false;      // a Reserve is in flight
  bool standby_reserve_again = false;  // a region was added while it was in flight
  bool standby_blocked = false;        // cannot ship: a full copy failed (retried, below)
  // When the failed copy is tried again (reserve afresh, copy again), and
  // how often it failed in a row (the wait doubles, 200 ms .. 5 s).
  std::chrono::steady_clock::time_point copy_retry_at{};
  uint32_t copy_failures = 0;
  uint64_t standby_staging = 0;        // the standby's staging address
  std::shared_ptr<void> standby_key;   // net::RemoteKey, on the agent's standby endpoint
  std::deque<Ship> to_ship;            // epochs waiting for the area (or a full copy)
  // Every epoch committed and not yet acknowledged by the standby, in
  // order: what is shipped again after a reconnect (their slots are still
  // the instance's: hot releases only acknowledged epochs).
  std::deque<Ship> unacked;
  uint64_t standby_acked = 0;          // newest epoch the standby acknowledged
  uint64_t ship_errors = 0;
  // Epochs shipped to the standby, and the bytes handed to UCX for them:
  // each slot's used bytes (by put, or in Data frames with their 64-byte
  // headers) and the Commit frame; full copies are counted apart.
  uint64_t shipped_epochs = 0, ship_bytes = 0;
  // A full copy of the committed image to the standby (full_copy.cc): the
  // replica lacks epochs that are only in the image now (a new or
  // restarted standby, a reconnect after a gap). Local applies wait in
  // `held` meanwhile, so the image stays the epoch being copied.
  struct FullCopy;
  std::shared_ptr<FullCopy> copy;
  std::deque<Ship> held;
  uint64_t full_copies = 0, full_copy_bytes = 0;
  // --on-standby-loss=continue: no standby acknowledged for longer than its
  // timeout, so epochs are durable once applied here (nothing ships, nothing
  // waits for an ack) until a standby's Reserved starts the full copy that
  // protects it again.
  bool unprotected = false;
  std::chrono::steady_clock::time_point unprotected_since{};
  uint64_t unprotected_periods = 0;

  // On the spare host: a replacement launched from a standby's replica
  // (Takeover), and how its failover went. Detection and fencing are the
  // standby's figures; launch (Takeover received → process spawned) and
  // attach (spawned → attached) are this agent's.
  struct Failover {
    std::string from;     // the fenced owner (its agent's name)
    std::string standby;  // who handed the replica over
    uint64_t epoch = 0;   // resumed at
    double detection_ms = 0;
    std::string detected_by;  // "close" (the old agent's process was gone) or "silence"
    double fencing_ms = 0;
    SteadyTime received{};
    double launch_ms = 0;
    std::optional<double> attach_ms;
  };
  std::optional<Failover> failover;
  // A planned failover in progress (Agent::OnFailover): the process is
  // being stopped; once the standby has every epoch, Move.
  struct Moving {
    std::string reason;
    SteadyTime started{};
    std::vector<ConnRef> waiters;  // `spare failover` answered when moved
    bool move_sent = false;
  };
  std::optional<Moving> moving;

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
  double apply_seconds_max = 0;
  uint64_t apply_retries = 0;  // writes of an epoch started again after a failure
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
  // A new apply chain and epoch queue at rec.epoch, for an image just made
  // or adopted. REQUIRES: no apply in flight for this instance.
  void ResetImageState();
  // Drops the committed image (stop, or a re-run that starts fresh). The
  // caller retires the returned chain off the loop (Agent::ReleaseImage).
  [[nodiscard]] std::shared_ptr<ApplyChain> ReleaseImage();
};

}  // namespace spare::agent
