// epoch/copy_pool.h — copies an epoch's page data into staging, with help
// from extra threads when the epoch is large.
//
// Work sharing, not hand-off. Copy() cuts its jobs into ~256 KiB chunks;
// the calling thread and the helpers claim chunks from one atomic counter.
// The caller copies until no chunk is left, then waits only for the chunks
// a helper already claimed (at most one per helper, tens of µs). A helper
// that is not scheduled in time (busy machine) claims nothing and the
// caller copies everything itself, so the copy is not slower than copying
// alone, give or take one futex wake. The exception: a helper preempted in
// the middle of a chunk holds the caller until it runs again. The caller
// cannot take that chunk over: the helper would still write into the slot
// after it was handed to the agent.
//
// Small copies stay on the caller: below kParallelMin bytes no helper is
// woken, below kStreamMin the bytes are memcpy'd (they stay in the cache,
// where the agent will read them soon) instead of streamed (copy.h), and
// so is every job shorter than kStreamJobMin.
//
// Threads: helpers are started by the first Copy() large enough to use
// them, so a process that never commits a large epoch starts none. Between
// copies they sleep on a futex (std::atomic::wait); they never spin while
// idle. They block asynchronous signals (the app's signal handling sees no
// new thread), but not SIGSEGV/SIGBUS/SIGFPE/SIGILL. The destructor joins
// them.
// Cost seen on the 6.18 test VM: once a helper has run, the uffd
// tracker's write-protect step also sends a TLB-flush IPI to the helper's
// CPU (about one per collect); that was tens of µs per commit, far less than
// the copy time saved, and not measurable on small commits.
// Fork: a child has no helpers. Copy() in the child copies alone and the
// destructor does not join threads that do not exist there.
//
// Thread-safety: one thread at a time calls Copy() (the commit thread).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "spare/status.h"

namespace spare::epoch {

class CopyPool {
 public:
  struct Job {
    std::byte* dst;
    const std::byte* src;
    size_t n;
    // When set, receives Hash64(src, n) (data_hash.h), computed by the
    // thread that copied the job right after copying it, while the bytes
    // are in its cache. A hashed job is never cut: keep it <= kHashLeaf.
    uint64_t* hash = nullptr;
  };
  static constexpr size_t kStreamMin = 256 * 1024;     // total bytes: stream, not memcpy
  // Per job: a shorter piece is memcpy'd even in a streamed copy. Declared
  // byte ranges are often a few hundred bytes (one value, one hash slot);
  // non-temporal stores of such pieces ran at a third of memcpy + hash
  // here (1500 pieces of 520 B: 750 us vs 260 us), pages and larger at par.
  static constexpr size_t kStreamJobMin = 4096;
  static constexpr size_t kParallelMin = 1024 * 1024;  // total bytes: wake the helpers
  static constexpr size_t kChunk = 256 * 1024;         // unit of work sharing

  // helpers: extra threads at most (0: the caller always copies alone).
  explicit CopyPool(unsigned helpers);
  ~CopyPool();
  CopyPool(const CopyPool&) = delete;
  CopyPool& operator=(const CopyPool&) = delete;

  // Copies (and hashes, where asked) every job. On return every byte is
  // written, every hash stored, and ordered before
  // the caller's later stores (each thread that copied has fenced, and the
  // caller acquired the helpers' completion), so the caller may publish.
  // REQUIRES: no destination overlaps another job's source or destination.
  void Copy(std::span<const Job> jobs);

  unsigned helpers() const { return helpers_; }
  // Bytes the helpers copied so far (the rest the caller did).
  uint64_t helper_bytes() const { return helper_bytes_.load(std::memory_order_relaxed); }

 private:
  void CopyAlone(std::span<const Job> jobs, bool stream);
  bool StartHelpers();  // false: none could be started, or this is a forked child
  void Cut(std::span<const Job> jobs);
  size_t CopyChunk(uint32_t chunk);    // bytes copied
  uint32_t ClaimAndCopy(bool helper);  // chunks copied
  void HelperLoop(uint32_t seen);

  unsigned helpers_;
  pid_t owner_ = 0;  // process that started the helpers
  std::vector<std::unique_ptr<std::thread>> threads_;

  // The current parallel copy. Written by the caller only while no helper
  // can read them: before publishing the run in claim_, and after every
  // chunk of the previous run has been reported done.
  std::vector<Job> cuts_;       // the jobs cut at chunk boundaries
  std::vector<uint32_t> ends_;  // chunk c is cuts_[c ? ends_[c-1] : 0, ends_[c])
  uint32_t run_ = 0;

  // (run << 32) | next chunk to claim. The run tag makes a helper that
  // read a finished run's counter fail its compare-exchange.
  std::atomic<uint64_t> claim_{0};
  std::atomic<uint32_t> chunks_{0};  // chunks in the current run
  std::atomic<uint32_t> done_{0};    // chunks of the current run helpers finished
  std::atomic<uint32_t> wake_{0};    // bumped per run and at shutdown; helpers wait on it
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> helper_bytes_{0};
};

// $SPARE_COPY_THREADS: helper threads for copying large epochs, 0..8.
// Unset: 1 if this process may run on more than one CPU, else 0. kInvalidArgument
// names a bad value.
Result<unsigned> CopyHelpersFromEnv();

}  // namespace spare::epoch
