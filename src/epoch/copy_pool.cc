#include "epoch/copy_pool.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

#include "epoch/copy.h"
#include "epoch/data_hash.h"

namespace spare::epoch {

CopyPool::CopyPool(unsigned helpers) : helpers_(helpers) {}

CopyPool::~CopyPool() {
  if (threads_.empty()) return;
  if (::getpid() != owner_) {
    // A forked child: the helpers exist only in the parent. Joining (or
    // destroying a joinable std::thread) would hang or abort; leak the
    // handles instead.
    for (auto& t : threads_) (void)t.release();
    return;
  }
  stop_.store(true, std::memory_order_release);
  wake_.fetch_add(1, std::memory_order_release);
  wake_.notify_all();
  for (auto& t : threads_) t->join();
}

void CopyPool::Copy(std::span<const Job> jobs) {
  size_t total = 0;
  for (const Job& j : jobs) total += j.n;
  const bool stream = total >= kStreamMin;
  if (helpers_ == 0 || total < kParallelMin || !StartHelpers()) return CopyAlone(jobs, stream);

  Cut(jobs);
  const auto n = static_cast<uint32_t>(ends_.size());
  done_.store(0, std::memory_order_relaxed);
  chunks_.store(n, std::memory_order_relaxed);
  ++run_;
  claim_.store(uint64_t{run_} << 32, std::memory_order_release);  // publishes the above
  wake_.fetch_add(1, std::memory_order_release);
  wake_.notify_all();

  const uint32_t mine = ClaimAndCopy(/*helper=*/false);
  // Only chunks a helper claimed are left; each is being copied right now.
  for (uint32_t d = done_.load(std::memory_order_acquire); d != n - mine;
       d = done_.load(std::memory_order_acquire)) {
    done_.wait(d, std::memory_order_acquire);
  }
}

namespace {

void CopyJob(const CopyPool::Job& j, bool stream) {
  stream = stream && j.n >= CopyPool::kStreamJobMin;
  if (stream && j.hash) {
    *j.hash = StreamCopyAndHash(j.dst, j.src, j.n);  // hashes each piece while it is in L1
    return;
  }
  if (stream) {
    StreamCopy(j.dst, j.src, j.n);
  } else {
    std::memcpy(j.dst, j.src, j.n);
  }
  if (j.hash) *j.hash = Hash64(j.src, j.n);  // the source is hot in this core's cache now
}

}  // namespace

void CopyPool::CopyAlone(std::span<const Job> jobs, bool stream) {
  for (const Job& j : jobs) CopyJob(j, stream);
  if (stream) StreamFence();
}

bool CopyPool::StartHelpers() {
  if (!threads_.empty()) return ::getpid() == owner_;
  // Helpers inherit this mask: asynchronous signals stay with the app's
  // threads. Synchronous ones must stay deliverable (a blocked SIGSEGV
  // kills the process instead of reaching the app's handler).
  sigset_t all, old;
  sigfillset(&all);
  for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigdelset(&all, s);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const uint32_t seen = wake_.load(std::memory_order_relaxed);
  try {
    while (threads_.size() < helpers_)
      threads_.push_back(std::make_unique<std::thread>([this, seen] { HelperLoop(seen); }));
  } catch (const std::system_error&) {
    // Out of threads: work with the ones we have, from now on.
    helpers_ = static_cast<unsigned>(threads_.size());
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  owner_ = ::getpid();
  return !threads_.empty();
}

// Cuts the jobs so that every chunk is exactly kChunk bytes (the last one
// may be shorter). Jobs are page multiples in staging, so cuts stay on
// page boundaries. A hashed job is never cut (its hash needs all of it on
// one thread): it closes the open chunk if it would not fit.
void CopyPool::Cut(std::span<const Job> jobs) {
  cuts_.clear();
  ends_.clear();
  size_t fill = 0;  // bytes in the open chunk
  for (const Job& j : jobs) {
    if (j.hash) {
      if (fill && fill + j.n > kChunk) {
        ends_.push_back(static_cast<uint32_t>(cuts_.size()));
        fill = 0;
      }
      cuts_.push_back(j);
      fill += j.n;
      if (fill >= kChunk) {
        ends_.push_back(static_cast<uint32_t>(cuts_.size()));
        fill = 0;
      }
      continue;
    }
    for (size_t off = 0; off < j.n;) {
      const size_t len = std::min(j.n - off, kChunk - fill);
      cuts_.push_back({j.dst + off, j.src + off, len, nullptr});
      off += len;
      fill += len;
      if (fill == kChunk) {
        ends_.push_back(static_cast<uint32_t>(cuts_.size()));
        fill = 0;
      }
    }
  }
  if (fill) ends_.push_back(static_cast<uint32_t>(cuts_.size()));
}

size_t CopyPool::CopyChunk(uint32_t chunk) {
  size_t bytes = 0;
  for (uint32_t k = chunk ? ends_[chunk - 1] : 0; k < ends_[chunk]; ++k) {
    CopyJob(cuts_[k], /*stream=*/true);
    bytes += cuts_[k].n;
  }
  return bytes;
}

// The caller claims with fetch_add (only it can move the counter past the
// end, once). A helper claims with compare-exchange, and only while the
// counter it read is below the run's chunk count: if the caller has
// finished that run and published another meanwhile, the run tag in claim_
// differs and the exchange fails, so a helper never copies a stale chunk.
uint32_t CopyPool::ClaimAndCopy(bool helper) {
  uint32_t copied = 0;
  for (;;) {
    uint64_t c;
    if (helper) {
      c = claim_.load(std::memory_order_acquire);
      if (static_cast<uint32_t>(c) >= chunks_.load(std::memory_order_acquire)) break;
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
    } else {
      c = claim_.fetch_add(1, std::memory_order_acq_rel);
      if (static_cast<uint32_t>(c) >= chunks_.load(std::memory_order_relaxed)) break;
    }
    const size_t bytes = CopyChunk(static_cast<uint32_t>(c));
    ++copied;
    if (helper) {
      helper_bytes_.fetch_add(bytes, std::memory_order_relaxed);
      StreamFence();  // this chunk is in memory before done_ says so
      done_.fetch_add(1, std::memory_order_release);
      done_.notify_one();
    }
  }
  if (!helper) StreamFence();
  return copied;
}

void CopyPool::HelperLoop(uint32_t seen) {
  pthread_setname_np(pthread_self(), "spare-copy");
  for (;;) {
    wake_.wait(seen, std::memory_order_acquire);  // futex sleep until the next run
    seen = wake_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    ClaimAndCopy(/*helper=*/true);
  }
}

Result<unsigned> CopyHelpersFromEnv() {
  const char* v = std::getenv("SPARE_COPY_THREADS");
  if (v == nullptr || *v == '\0') {
    // CPUs this process may run on (taskset/cgroup cpusets), not the machine's.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 1 ? 1u : 0u;
    return std::thread::hardware_concurrency() > 1 ? 1u : 0u;
  }
  char* end = nullptr;
  const unsigned long n = std::strtoul(v, &end, 10);
  if (*end != '\0' || end == v || n > 8 || v[0] == '-')
    return Status(Code::kInvalidArgument,
                  "SPARE_COPY_THREADS=\"" + std::string(v) +
                      "\": expected the number of helper threads for copying large epochs, 0..8");
  return static_cast<unsigned>(n);
}

}  // namespace spare::epoch
