// spare/runtime.h — what a protected program links against. Start here.
//
// A program attaches to its host's agent, maps named regions at fixed
// virtual addresses, keeps its state in them, and declares epochs with
// commit() at quiescent points (between request batches). Every output a
// client may see goes through the gate and is released only once the epoch
// it depends on is durable (policy `local`: applied to the committed image
// by the agent; later policies: acknowledged by the standby).
//
// After a crash the agent restarts the program; attach() then reports
// resumed() and the regions hold exactly the last durable epoch's state,
// mapped at the same addresses (no copy: the region maps the committed
// image MAP_PRIVATE).
//
//   auto rt = spare::Runtime::Attach();               // SPARE_AGENT=<dir>
//   if (!rt.ok()) { fprintf(stderr, "%s\n", rt.status().ToString().c_str()); exit(1); }
//   auto heap = rt->region("heap", 1 << 30);          // Result<Region*>
//   if (rt->resumed()) { /* state in *heap is epoch rt->epoch(); rt->record() */ }
//   ... serve a batch, rt->gate().send(fd, reply) for each reply ...
//   rt->commit(record);                               // returns fast
//   ... epoll on rt->fd(); when readable: rt->poll();  // releases outputs
//
// Threading: a Runtime and everything it hands out belong to one thread
// (the thread that calls commit; commit() and poll() need a point where no
// other thread writes the regions). libspare may start one helper thread of
// its own ("spare-copy"; $SPARE_COPY_THREADS=N allows N, 0 none), the
// first time commit() copies a large epoch (>= 1 MiB): it shares such
// copies with the committing thread, sleeps between commits, blocks
// asynchronous signals, and is joined when the Runtime is destroyed.
// What may be stored in a region: see docs/REGIONS.md (plain data and
// pointers into regions; no fds, no pointers to heap/stack/TLS, no mutexes
// shared with other processes, no pointers into shared libraries).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "spare/gate.h"
#include "spare/status.h"

namespace spare {

class RuntimeImpl;

// A named memory area at a fixed virtual address. Owned by its Runtime;
// valid until the Runtime is destroyed.
class Region {
 public:
  const std::string& name() const { return name_; }
  void* data() const { return data_; }
  size_t size() const { return size_; }
  std::byte* bytes() const { return static_cast<std::byte*>(data_); }

  // True when the region was mapped with WriteTracking::kDeclared: only the
  // bytes declared with declare() (or spare::DeclareWrite, spare/declare.h)
  // reach the next epoch.
  bool declares_writes() const { return declares_; }
  // Declares that [p, p+n) was (or is about to be) written in the current
  // epoch; the next commit() ships exactly those bytes. Bytes outside the
  // region are ignored. No-op for page-tracked regions.
  void declare(const void* p, size_t n) const;

 private:
  friend class RuntimeImpl;
  Region(std::string name, void* data, size_t size, bool declares)
      : name_(std::move(name)), data_(data), size_(size), declares_(declares) {}
  std::string name_;
  void* data_;
  size_t size_;
  bool declares_;
};

// How commit() finds what a region's epoch must carry.
enum class WriteTracking {
  // The dirty-page tracker (region/tracker.h) reports every page written
  // since the last commit; whole pages ship. Nothing to do in the program.
  kPages,
  // The program declares the byte ranges it writes (Region::declare,
  // spare::DeclareWrite; spare::Arena does it for its own metadata and for
  // new blocks). Only declared bytes ship, and the page tracker is not
  // involved at all: no write faults, no page-table walk at commit. A write
  // that is not declared is lost at the next restart. $SPARE_VERIFY_WRITES=1
  // runs the page tracker as a safety net: commit() then fails (sticky,
  // kDataLoss) naming the first byte written but not declared. Use it in
  // tests.
  kDeclared,
};

struct RegionOptions {
  // 0: derived from (instance id, region name), the same on every run.
  // Otherwise the exact address to map at (page aligned).
  uint64_t address = 0;
  WriteTracking writes = WriteTracking::kPages;
};

// What a configuration-checkpoint lookup found (seed 002).
enum class ConfigState {
  kHit,      // key present, fingerprint matches: blob is the saved value
  kStale,    // key present, fingerprint changed: redo discovery, then save
  kMissing,  // never saved
};
struct ConfigLookup {
  ConfigState state = ConfigState::kMissing;
  std::string blob;  // set only for kHit
};

struct RuntimeStats {
  uint64_t commits = 0;           // epochs handed to the agent
  uint64_t deferred_commits = 0;  // commits merged into a later epoch (staging busy)
  uint64_t paced_commits = 0;     // commits merged into a later epoch by pacing
  uint64_t pages_committed = 0;
  uint64_t bytes_committed = 0;
  uint64_t commit_ns_total = 0;  // time spent inside commit()
  uint64_t commit_ns_max = 0;
  // Where commit() spends it (sums over all commits; the rest is waiting
  // for slots and bookkeeping):
  uint64_t collect_ns_total = 0;   // finding what was written (tracker, declared ranges)
  uint64_t copy_ns_total = 0;      // copying and hashing it into staging slots
  uint64_t handover_ns_total = 0;  // the Commit message to the agent
  uint64_t drop_ns_total = 0;      // dropping private copies of long-clean pages
  uint64_t ranges_committed = 0;   // entries (contiguous byte runs) shipped
  uint64_t declare_calls = 0;      // DeclareWrite calls that hit declared regions
  uint64_t bytes_declared = 0;     // bytes they named (overlaps counted each time)
  uint64_t pages_verified = 0;     // dirty pages checked against declarations ($SPARE_VERIFY_WRITES)
  uint64_t backpressure_waits = 0;  // commits that blocked for a free slot
  uint64_t outputs_released = 0;
  uint64_t released_epoch = 0;  // newest epoch whose staging slots the agent released
  uint64_t durable_epoch = 0;   // newest epoch the agent confirmed durable
  uint64_t releases = 0;        // Released messages (slots freed)
  uint64_t durables = 0;        // Durable messages (outputs released)
  uint64_t pages_dropped = 0;   // private copies of long-clean pages dropped ($SPARE_DROP_CLEAN_MS)
  uint64_t drop_errors = 0;     // madvise calls refused (the copies were kept)
  // Dropped pages written again soon after (a wasted drop and fault each),
  // and how long a page must now stay clean before its copy is dropped:
  // $SPARE_DROP_CLEAN_MS, doubled while most drops come back, up to 16x.
  uint64_t drop_refaults = 0;
  uint64_t drop_window_ms = 0;
  std::string tracker;          // "uffd-wp" or "mprotect"
  uint32_t copy_helpers = 0;    // helper threads allowed ($SPARE_COPY_THREADS)
  uint64_t bytes_copied_by_helpers = 0;  // of bytes_committed

  // Drops from poll() while no commits come (part of pages_dropped); one
  // pass is bounded (16 MiB, ~2 ms here), idle_drop_ns_max shows it.
  uint64_t pages_dropped_idle = 0;
  uint64_t idle_drop_passes = 0;
  uint64_t idle_drop_ns_total = 0;  // collect + madvise, outside commit()
  uint64_t idle_drop_ns_max = 0;

  // The process sharing this one's address space so that its kill -9 does
  // not wait for the teardown (0: none; $SPARE_EXIT_HELPER=0, or unprotected).
  int64_t exit_helper_pid = 0;
};

class Runtime {
 public:
  // Connects to the agent named by $SPARE_AGENT (a directory holding
  // agent.sock) as instance $SPARE_INSTANCE. Fails with a Status that says
  // what is missing when the program was not started by `spare run`.
  static Result<Runtime> Attach();
  // A runtime without an agent: regions are anonymous memory, commit() does
  // nothing, the gate releases at once. The baseline for benchmarks.
  static Result<Runtime> Unprotected();

  Runtime(Runtime&&) noexcept;
  Runtime& operator=(Runtime&&) noexcept;
  ~Runtime();

  bool protected_mode() const;
  const std::string& instance_id() const;
  // True under policy hot: another host may take the instance over (the
  // standby fails it over while this process still runs, e.g. when only
  // its agent died or its host was cut off), so a reply computed from the
  // state of an epoch already durable may be stale by the time it leaves.
  // A reply to a read must then depend on pending_epoch() too, and be
  // released only once an epoch committed after the read is durable: the
  // standby acknowledging it proves this process still owned the instance
  // (a fenced owner's epochs are never acknowledged). Under policy local
  // nobody else can own the instance, and reads may depend on the last
  // committed epoch.
  bool reads_wait_for_epoch() const;

  // Maps (or on resume, re-maps) region `name` of `size` bytes (rounded up
  // to pages). Calling it again with the same name returns the same Region.
  // Errors: kInvalidArgument (size differs from the committed image's),
  // kResourceExhausted (address range taken).
  Result<Region*> region(std::string_view name, size_t size, RegionOptions options = {});

  // True when this process was started from a committed image that holds
  // at least one epoch (a restart after a crash, or a failover).
  bool resumed() const;
  // The record attached to the last durable epoch (empty if none).
  std::span<const std::byte> record() const;

  // Declares an epoch: the pages written since the previous commit, and
  // `record` (<= 64 KiB), become epoch epoch()+1. Copies the dirty pages to
  // staging and returns without waiting for the agent. If staging is full
  // the epoch is merged into the next commit (its outputs are covered by
  // that later epoch); past the merge bound it blocks until a slot frees.
  // Never drops a page. Returns the epoch number assigned.
  // Pacing (group commit by cost): while recent commits took more than
  // $SPARE_PACE_SHARE percent (default 10, 0 = off) of the time between
  // them and an epoch is in flight, a commit is merged into the next one
  // without collecting anything, for at most $SPARE_PACE_BUDGET_US
  // (default 2000) after the first merged one; commit_deferred() is then
  // true, as for a full ring (call commit() again once the epoch in flight
  // is durable); wait_durable() on the promised epoch ships it at once.
  // Call it where no other thread writes the regions (the quiescent point
  // the epoch captures): it also drops the private copies of pages that
  // stayed clean for $SPARE_DROP_CLEAN_MS (default 1000, 0 = never) once
  // their epoch is durable — they read from the committed image again — a
  // few MiB per call at most; a write racing with that would be lost.
  // poll() drops them too while no commits come.
  Result<uint64_t> commit(std::span<const std::byte> record = {});
  Result<uint64_t> commit(std::string_view record) {
    return commit(std::as_bytes(std::span(record.data(), record.size())));
  }

  uint64_t epoch() const;          // newest epoch handed over (or resumed from)
  uint64_t pending_epoch() const;  // epoch that outputs produced now depend on
  uint64_t durable_epoch() const;  // newest epoch the agent confirmed durable
  // True when the last commit() was merged into the next epoch (staging
  // busy, or the agent away). Only commit() ships epochs — its record must
  // match the state — so call commit() again soon (an event loop does this
  // on a short timer while this is true).
  bool commit_deferred() const;

  Gate& gate();

  // Readable when the agent has news (an epoch applied) or when private
  // copies of long-clean pages are due to be dropped. Add it to your event
  // loop and call poll() when it is readable.
  int fd() const;
  // Processes agent messages without blocking and releases outputs of
  // durable epochs. Then, when due, drops private copies of pages clean for
  // $SPARE_DROP_CLEAN_MS whose epoch is durable (as commit() does, up to
  // 16 MiB per call, ~2 ms; fd() stays readable while more are due), so an
  // idle program's memory shrinks to what it still writes. Pages written
  // since the last commit are kept: poll() first collects them for the next
  // commit, as commit() would.
  // REQUIRES: called from the thread that commits, at a point where no
  // other thread writes the regions (as for commit()): a write racing with
  // the drop would be lost.
  // Errors are sticky (returned again by later calls).
  Status poll();
  // Blocks until durable_epoch() >= epoch or timeout_ms passes (-1: forever).
  // REQUIRES: epoch <= epoch() (handed over, not deferred), or the last
  // commit() was merged by pacing and returned `epoch`: that one is then
  // shipped first.
  Status wait_durable(uint64_t epoch, int timeout_ms = -1);

  // The program has detected a defined error condition and wants its host
  // gone (seed 000): the agent stops this process, makes sure the standby
  // has every epoch it committed, and has the standby launch it on the
  // spare host from the last one (policy hot only). Returns once the agent
  // accepted; the process is killed shortly after, so call it where losing
  // everything since the last commit() is acceptable (nothing uncommitted
  // was ever released to a client). kFailedPrecondition when the instance
  // is not under policy hot, kUnavailable when it is not protected now
  // (standby unreachable, a full copy in progress); unprotected runtimes:
  // kFailedPrecondition.
  Status request_failover(std::string_view reason);

  // Configuration checkpoints (seed 002): fingerprint = a hash of whatever
  // the discovered value depends on.
  Result<ConfigLookup> config_lookup(std::string_view key, uint64_t fingerprint);
  Status config_save(std::string_view key, uint64_t fingerprint, std::string_view blob);

  RuntimeStats stats() const;

 private:
  explicit Runtime(std::unique_ptr<RuntimeImpl> impl);
  std::unique_ptr<RuntimeImpl> impl_;
};

}  // namespace spare
