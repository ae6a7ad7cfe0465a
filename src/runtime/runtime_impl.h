// runtime/runtime_impl.h — the instance side of spare (private).
//
// One RuntimeImpl per process, used from one thread. It owns:
//   - the socket to the agent and an internal epoll fd (what fd() returns)
//     holding that socket and, while the agent is unreachable, a reconnect
//     timer — so the app's epoll registration survives reconnects;
//   - the region memfds it was handed (kept open so a restarted agent can
//     be handed them back) and their MAP_PRIVATE mappings;
//   - the mapped staging area: slots [next_slot_ - busy_, next_slot_) are
//     the agent's (handed over, not yet Released), the rest are ours;
//   - the epochs handed over: in_flight_ until Released (their slots are
//     the agent's), then unconfirmed_ until Durable (their outputs wait);
//   - the dirty tracker, and `carry_`: pages collected but not yet copied
//     to staging (a deferred epoch), which the next shipped epoch includes;
//   - the copy pool that fills staging slots, with the helper thread(s) it
//     starts for large epochs ($SPARE_COPY_THREADS, epoch/copy_pool.h);
//     they touch nothing but the page data of the epoch being copied, and
//     only inside commit();
//   - the drop timer (in epfd_ too, idle.cc): wakes the app's loop so that
//     poll() drops private copies while no commits come;
//   - the exit helper (exit_helper.h), a process sharing our address space
//     so that a kill -9 does not wait for its teardown.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"
#include "epoch/copy_pool.h"
#include "epoch/staging.h"
#include "ipc/wire.h"
#include "region/tracker.h"
#include "region/write_log.h"
#include "runtime/exit_helper.h"
#include "runtime/reclaim.h"
#include "spare/runtime.h"

namespace spare {

// Group commit by cost: when commits take more than share_pct of the time
// between them, consecutive commits are merged into one epoch (nothing is
// collected or copied for a merged one), for at most budget_ns after the
// first merged one, so outputs wait at most that much longer.
struct PaceOptions {
  uint32_t share_pct = 10;  // 0: never merge
  uint64_t budget_ns = 2'000'000;
};
// $SPARE_PACE_SHARE (percent, 0-100) and $SPARE_PACE_BUDGET_US;
// kInvalidArgument names a bad value.
Result<PaceOptions> PaceOptionsFromEnv();

class RuntimeImpl {
 public:
  static Result<std::unique_ptr<RuntimeImpl>> Attach();
  static Result<std::unique_ptr<RuntimeImpl>> Unprotected();
  ~RuntimeImpl();

  Result<Region*> region(std::string_view name, size_t size, RegionOptions options);
  Result<uint64_t> commit(std::span<const std::byte> record);
  Status poll();
  Status wait_durable(uint64_t epoch, int timeout_ms);
  Result<ConfigLookup> config_lookup(std::string_view key, uint64_t fingerprint);
  Status config_save(std::string_view key, uint64_t fingerprint, std::string_view blob);
  Status request_failover(std::string_view reason);
  RuntimeStats stats() const;

  bool protected_mode() const { return protected_; }
  bool reads_wait_for_epoch() const { return reads_wait_; }
  const std::string& instance_id() const { return id_; }
  bool resumed() const { return resumed_; }
  std::span<const std::byte> record() const {
    return std::as_bytes(std::span(record_.data(), record_.size()));
  }
  uint64_t epoch() const { return epoch_; }
  uint64_t pending_epoch() const { return epoch_ + 1; }
  uint64_t durable_epoch() const { return durable_; }
  bool commit_deferred() const { return deferrals_ > 0; }
  Gate& gate() { return gate_; }
  int fd() const { return epfd_.get(); }

 private:
  struct RegionState {
    std::unique_ptr<Region> region;
    UniqueFd memfd;  // the committed image; invalid when unprotected
    // WriteTracking::kDeclared: where DeclareWrite puts the ranges (null
    // for page-tracked regions), and with $SPARE_VERIFY_WRITES the region's
    // contents as of the last collection, to tell declared bytes from
    // undeclared ones (verify.cc).
    std::unique_ptr<region::WriteLog> log;
    void* shadow = nullptr;
  };
  struct InFlight {
    uint64_t epoch;
    uint32_t first_slot;
    uint32_t parts;
    std::string record;
  };
  RuntimeImpl() = default;

  // --- connection.cc: talking to the agent ---
  Status Connect(bool reattach);
  void Disconnected(const Status& why);
  Status TryReconnect();
  Result<ipc::Message> Request(ipc::Message request, int timeout_ms = 10000);
  Status Handle(ipc::Message msg);
  Status Drain();                    // handle everything that is there now
  Status WaitEvent(int timeout_ms);  // block for agent news (or reconnect tick)
  void OnReleased(uint64_t epoch);
  void OnDurable(uint64_t epoch);

  // --- verify.cc: $SPARE_VERIFY_WRITES for declared regions ---
  Status StartShadow(RegionState& rs);
  Status VerifyDeclared(uint32_t index, std::span<const region::PageRange> dirty);

  // --- commit.cc: the epoch pipeline ---
  Status Collect();
  Status ForgetDeclared();  // unprotected commit(): nothing ships, verify still runs
  bool Pace(uint64_t now_ns);                    // true: merge this commit into the next
  // No pacing; t0: when commit() started (0: now).
  Result<uint64_t> CommitNow(std::span<const std::byte> record, uint64_t t0);
  Status ShipPaced();  // ships the commit pacing held back, if any
  void Paced(uint64_t start_ns, uint64_t end_ns);  // a shipped commit's cost, for Pace()
  void DropCleanCopies();
  bool TryShip(std::span<const std::byte> record, Status* error);
  uint32_t FreeSlots() const { return staging_.slot_count - busy_; }

  // --- idle.cc: dropping private copies from poll() ---
  Status AddDropTimer();
  Status DropWhileIdle();

  bool protected_ = false;
  bool reads_wait_ = false;  // policy hot (Runtime::reads_wait_for_epoch)
  std::string id_;
  std::string agent_dir_;
  uint64_t generation_ = 0;
  UniqueFd sock_;
  UniqueFd epfd_;
  UniqueFd timer_;
  bool connected_ = false;
  std::chrono::steady_clock::time_point next_reconnect_{};

  std::unique_ptr<region::DirtyTracker> tracker_;
  bool verify_writes_ = false;  // $SPARE_VERIFY_WRITES=1
  std::vector<RegionState> regions_;
  UniqueFd staging_fd_;
  epoch::StagingView staging_;
  std::unique_ptr<epoch::CopyPool> copy_pool_;

  bool resumed_ = false;
  std::string record_;  // record of the durable epoch
  uint64_t epoch_ = 0;
  uint64_t durable_ = 0;
  std::deque<InFlight> in_flight_;  // handed over, slots not yet released
  struct Unconfirmed {
    uint64_t epoch;
    std::string record;
  };
  std::deque<Unconfirmed> unconfirmed_;  // released, not yet durable
  uint64_t released_ = 0;                // newest epoch whose slots were released
  std::string released_record_;          // its record (the image's, on reattach)
  uint32_t next_slot_ = 0;
  uint32_t busy_ = 0;
  std::vector<PageSpan> carry_;  // collected, not yet copied to staging
  uint32_t deferrals_ = 0;
  // Epoch pacing ($SPARE_PACE_SHARE, $SPARE_PACE_BUDGET_US; commit.cc).
  PaceOptions pace_;
  uint64_t pace_cost_ns_ = 0;      // moving average of a shipped commit's time
  uint64_t pace_interval_ns_ = 0;  // ... and of the time between shipped commits
  uint64_t last_ship_ns_ = 0;      // when the last shipped commit started
  uint64_t pace_since_ns_ = 0;     // first commit merged by pacing since then (0: none)
  bool paced_pending_ = false;     // the last commit() was merged by pacing
  std::string paced_record_;       // ... with this record
  uint32_t planned_parts_ = 0;  // slots the last TryShip() needed
  std::vector<region::PageRange> scratch_;
  std::vector<PageSpan> written_;  // scratch: pages collected, for the reclaimer
  Reclaimer reclaimer_{Reclaimer::Options{.clean_after_ns = 0}};
  std::vector<PageSpan> drops_;  // scratch: spans DropCleanCopies() drops
  UniqueFd drop_timer_;          // only while dropping is on
  uint64_t drop_timer_at_ = 0;   // CLOCK_MONOTONIC ns it is armed for, 0: disarmed
  std::vector<epoch::DirtyRun> runs_;

  Status error_;  // sticky
  Gate gate_;
  RuntimeStats stats_;
  ExitHelper exit_helper_;  // shares our address space; see exit_helper.h
};

}  // namespace spare
