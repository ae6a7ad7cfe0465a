// The mprotect dirty tracker, for kernels without async uffd-wp.
//
// Tracked pages are PROT_READ. A write faults; the process-wide SIGSEGV
// handler finds the tracked range, makes the page writable and sets its bit
// in the range's bitmap. Collect() takes the bits and makes those pages
// read-only again.
//
// Ordering — why no write is lost. For a page P:
//   handler:  (B) mprotect(P, RW)     then  (A) set bit P
//   Collect:  (X) fetch-and-clear bit P  then  (Y) mprotect(P, READ)
// Every interval in which P is writable starts with some B, and that B's A
// follows it, so a write to P while P is writable is always followed by its
// bit being set (possibly by an A still in flight). If X sees that bit, X
// happens after A and so after B; Y comes after X, so P is read-only again
// only once that B is done and cannot be undone by it. A write between X and
// Y does not fault (P is still writable) and is not in the bitmap any more —
// but P is in this collection, and the caller copies reported pages after
// Collect() returns, i.e. after Y, so the copy contains that write. If X
// does not see the bit, the A that sets it comes later and the page goes
// into the next collection. The reverse orders would lose writes: A before B
// lets X+Y run between them and B then leaves P writable with a clear bit;
// Y before X lets a fault set the bit in between and X then clears it while
// P stays writable.
//
// Async-signal safety: the handler touches only lock-free atomics in static
// storage, mprotect(), sigaction(), raise() and write(). Ranges are published
// in a fixed table of slots; a handler announces itself in the slot's
// `users` count before trusting it, and Remove() waits for that count to
// drain before freeing the bitmap (Dekker-style, both sides seq_cst).
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <mutex>
#include <string>

#include "region/mapping.h"
#include "region/tracker_internal.h"

namespace spare::region::internal {
namespace {

using Word = std::atomic<uint64_t>;
static_assert(Word::is_always_lock_free && std::atomic<uintptr_t>::is_always_lock_free &&
                  std::atomic<uint32_t>::is_always_lock_free &&
                  std::atomic<Word*>::is_always_lock_free,
              "the SIGSEGV handler needs lock-free atomics");

constexpr size_t kMaxSlots = 256;  // tracked ranges per process

// One published range. `state` counts transitions: odd = live, even = free,
// so a value never repeats and a handler can tell whether the slot changed
// while it looked at it. Written only under g_mu.
struct Slot {
  std::atomic<uint64_t> state{0};
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<Word*> bits{nullptr};
  std::atomic<uint32_t> users{0};  // handlers currently using this slot
};

Slot g_slots[kMaxSlots];
std::mutex g_mu;               // serializes slot changes and handler installation
bool g_installed = false;      // guarded by g_mu
struct sigaction g_prev = {};  // written once, before our handler is installed

void WriteStderr(const char* msg) {
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, msg, std::strlen(msg));
}

// Hands a fault that is not ours to whoever had SIGSEGV before us.
void Chain(int sig, siginfo_t* info, void* ctx) {
  if ((g_prev.sa_flags & SA_SIGINFO) != 0 && g_prev.sa_sigaction != nullptr) {
    g_prev.sa_sigaction(sig, info, ctx);
    return;
  }
  if ((g_prev.sa_flags & SA_SIGINFO) == 0 && g_prev.sa_handler != SIG_DFL &&
      g_prev.sa_handler != SIG_IGN) {
    g_prev.sa_handler(sig);
    return;
  }
  // Default action (an ignored SIGSEGV from a fault would just refault
  // forever). Restore it and return: the faulting instruction runs again and
  // the kernel kills the process with a normal SIGSEGV and core. A signal
  // sent with kill() is not re-triggered that way, so send it again.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGSEGV, &dfl, nullptr);
  if (info->si_code <= 0) ::raise(sig);
}

// Returns true if addr lies in a tracked range and the write may be retried.
bool MarkDirty(uintptr_t addr) {
  for (Slot& s : g_slots) {
    const uint64_t state = s.state.load(std::memory_order_acquire);
    if ((state & 1) == 0) continue;
    const uintptr_t start = s.start.load(std::memory_order_acquire);
    const uintptr_t end = s.end.load(std::memory_order_acquire);
    if (addr < start || addr >= end) continue;
    s.users.fetch_add(1, std::memory_order_seq_cst);
    bool retry = true;
    if (s.state.load(std::memory_order_seq_cst) == state) {
      // start/end/bits belong to `state` and stay valid while users > 0.
      const size_t page = (addr - start) / kPageSize;
      // (B) then (A), see the file comment. The bit is set only if mprotect
      // succeeded, so no optimizer can move (A) above (B). A build with the
      // two swapped loses writes on every run of WritesAreNeverLost/mprotect
      // ("write lost on page N word 0"); suspect a stale object first.
      if (::mprotect(reinterpret_cast<void*>(start + page * kPageSize), kPageSize,
                     PROT_READ | PROT_WRITE) == 0) {
        s.bits.load(std::memory_order_relaxed)[page / 64].fetch_or(uint64_t{1} << (page % 64),
                                                                   std::memory_order_acq_rel);
      } else {
        WriteStderr(
            "spare: mprotect dirty tracker cannot make a page writable (vm.max_map_count "
            "reached?); the write will crash\n");
        retry = false;
      }
    }
    // else: the range was removed meanwhile; Remove() made it writable
    // before unpublishing, so retrying the write is right.
    s.users.fetch_sub(1, std::memory_order_seq_cst);
    return retry;
  }
  return false;
}

void OnSegv(int sig, siginfo_t* info, void* ctx) {
  const int saved_errno = errno;
  // Our protection faults are always access errors on a mapped page.
  const bool ours =
      info->si_code == SEGV_ACCERR && MarkDirty(reinterpret_cast<uintptr_t>(info->si_addr));
  errno = saved_errno;
  if (!ours) Chain(sig, info, ctx);
}

Status InstallHandlerLocked() {
  if (g_installed) return Status::Ok();
  // Read the old action first so g_prev is complete before any fault can
  // reach OnSegv.
  if (::sigaction(SIGSEGV, nullptr, &g_prev) != 0) {
    return Status::FromErrno("mprotect tracker: sigaction(SIGSEGV) query", errno);
  }
  struct sigaction sa = {};
  sa.sa_sigaction = OnSegv;
  sigemptyset(&sa.sa_mask);
  // SA_ONSTACK: threads with an alternate stack (e.g. for stack overflow
  // reports) keep using it.
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  if (::sigaction(SIGSEGV, &sa, nullptr) != 0) {
    return Status::FromErrno("mprotect tracker: sigaction(SIGSEGV) install", errno);
  }
  g_installed = true;
  return Status::Ok();
}

// Takes slot i out of the table and waits until no handler uses it.
// REQUIRES: g_mu held, slot live.
void UnpublishLocked(size_t i) {
  Slot& s = g_slots[i];
  s.state.fetch_add(1, std::memory_order_seq_cst);
  while (s.users.load(std::memory_order_seq_cst) != 0) sched_yield();
  s.bits.store(nullptr, std::memory_order_relaxed);
}

class MprotectTracker final : public DirtyTracker {
 public:
  ~MprotectTracker() override {
    std::lock_guard lock(g_mu);
    for (Tracked& t : tracked_) {
      ::mprotect(reinterpret_cast<void*>(t.range.start), t.range.bytes(), PROT_READ | PROT_WRITE);
      UnpublishLocked(t.slot);
    }
  }

  Status Add(void* base, size_t len) override {
    const auto start = reinterpret_cast<uintptr_t>(base);
    const PageRange range{start, start + len};
    const std::string what = "mprotect tracker: " + DescribeRange(range.start, range.end);
    if (start % kPageSize != 0 || len % kPageSize != 0 || len == 0) {
      return Status(Code::kInvalidArgument, what + " must be page aligned and non-empty");
    }
    const size_t pages = len / kPageSize;
    auto bits = std::make_unique<Word[]>((pages + 63) / 64);  // value-initialized: all clean
    size_t slot = kMaxSlots;
    {
      std::lock_guard lock(g_mu);
      SPARE_RETURN_IF_ERROR(InstallHandlerLocked());
      for (size_t i = 0; i < kMaxSlots; ++i) {
        Slot& s = g_slots[i];
        if ((s.state.load(std::memory_order_relaxed) & 1) == 0) {
          if (slot == kMaxSlots) slot = i;
          continue;
        }
        const uintptr_t s_start = s.start.load(std::memory_order_relaxed);
        const uintptr_t s_end = s.end.load(std::memory_order_relaxed);
        if (range.start < s_end && s_start < range.end) {
          return Status(Code::kInvalidArgument,
                        what + " overlaps tracked range " + DescribeRange(s_start, s_end));
        }
      }
      if (slot == kMaxSlots) {
        return Status(Code::kResourceExhausted,
                      what + ": all " + std::to_string(kMaxSlots) + " tracked-range slots in use");
      }
      Slot& s = g_slots[slot];
      s.start.store(range.start, std::memory_order_release);
      s.end.store(range.end, std::memory_order_release);
      s.bits.store(bits.get(), std::memory_order_release);
      s.state.fetch_add(1, std::memory_order_release);  // now live
    }
    // Published before protecting: from here on every fault in the range
    // finds its slot.
    if (::mprotect(base, len, PROT_READ) != 0) {
      const int err = errno;
      std::lock_guard lock(g_mu);
      ::mprotect(base, len, PROT_READ | PROT_WRITE);
      UnpublishLocked(slot);
      return Status::FromErrno(what + ": mprotect(PROT_READ) (range must be mapped)", err);
    }
    tracked_.push_back(Tracked{range, slot, std::move(bits)});
    return Status::Ok();
  }

  // REQUIRES: no other thread writes the range while Remove() runs (it is
  // being torn down): a write that faulted before Remove() but is handled
  // after it would find no range and crash.
  Status Remove(void* base, size_t len) override {
    const auto start = reinterpret_cast<uintptr_t>(base);
    auto it = std::find_if(tracked_.begin(), tracked_.end(), [&](const Tracked& t) {
      return t.range == PageRange{start, start + len};
    });
    if (it == tracked_.end()) {
      return Status(Code::kNotFound,
                    DescribeRange(start, start + len) + " was not added to this tracker");
    }
    // Writable before unpublishing, so no write can fault into a missing slot.
    if (::mprotect(base, len, PROT_READ | PROT_WRITE) != 0) {
      return Status::FromErrno(
          "mprotect tracker: Remove " + DescribeRange(start, start + len) + ": mprotect(RW)",
          errno);
    }
    {
      std::lock_guard lock(g_mu);
      UnpublishLocked(it->slot);
    }
    tracked_.erase(it);
    return Status::Ok();
  }

  Status Collect(void* base, size_t len, std::vector<PageRange>* out) override;

  std::string_view name() const override { return "mprotect"; }

 private:
  struct Tracked {
    PageRange range;
    size_t slot;
    std::unique_ptr<Word[]> bits;  // one bit per page; read by the handler via the slot
  };

  // Takes the dirty bits of pages [p0, p1) of t into runs_ (absolute ranges).
  void TakeBits(const Tracked& t, size_t p0, size_t p1);
  // Puts the bits of every page in runs_ back (when re-protecting failed).
  void RestoreBits(const Tracked& t);

  std::vector<Tracked> tracked_;
  std::vector<PageRange> runs_;  // scratch for Collect
};

void MprotectTracker::TakeBits(const Tracked& t, size_t p0, size_t p1) {
  for (size_t w = p0 / 64; w * 64 < p1; ++w) {
    uint64_t mask = ~uint64_t{0};
    if (w == p0 / 64) mask &= ~uint64_t{0} << (p0 % 64);
    if ((w + 1) * 64 > p1) mask &= ~uint64_t{0} >> ((w + 1) * 64 - p1);
    Word& word = t.bits[w];
    // A load that sees no bit is as good as a fetch-and-clear that finds
    // none, and keeps a clean region from bouncing its cache lines.
    if ((word.load(std::memory_order_acquire) & mask) == 0) continue;
    uint64_t got = word.fetch_and(~mask, std::memory_order_acq_rel) & mask;
    while (got != 0) {
      const int lo = std::countr_zero(got);
      const int n = std::countr_one(got >> lo);
      const uintptr_t first = t.range.start + (w * 64 + lo) * kPageSize;
      AppendMerged(&runs_, 0, first, first + n * kPageSize);
      got &= n == 64 ? 0 : ~(((uint64_t{1} << n) - 1) << lo);
    }
  }
}

void MprotectTracker::RestoreBits(const Tracked& t) {
  for (const PageRange& r : runs_) {
    for (uintptr_t a = r.start; a < r.end; a += kPageSize) {
      const size_t page = (a - t.range.start) / kPageSize;
      t.bits[page / 64].fetch_or(uint64_t{1} << (page % 64), std::memory_order_acq_rel);
    }
  }
}

Status MprotectTracker::Collect(void* base, size_t len, std::vector<PageRange>* out) {
  const auto start = reinterpret_cast<uintptr_t>(base);
  auto it = std::find_if(tracked_.begin(), tracked_.end(), [&](const Tracked& t) {
    return t.range.start <= start && start + len <= t.range.end;
  });
  if (it == tracked_.end() || start % kPageSize != 0 || len % kPageSize != 0) {
    return Status(Code::kNotFound, DescribeRange(start, start + len) +
                                       " is not page aligned inside a range added to this tracker");
  }
  const size_t p0 = (start - it->range.start) / kPageSize;
  runs_.clear();
  TakeBits(*it, p0, p0 + len / kPageSize);  // (X) for every page, before any (Y)
  for (const PageRange& r : runs_) {
    if (::mprotect(reinterpret_cast<void*>(r.start), r.bytes(), PROT_READ) != 0) {
      // Nothing may be lost: give every taken page back to the bitmap. Pages
      // already re-protected are then reported once more; harmless.
      const int err = errno;
      RestoreBits(*it);
      return Status::FromErrno(
          "mprotect tracker: re-protect " + DescribeRange(r.start, r.end) + " (vm.max_map_count?)",
          err);
    }
  }
  const size_t first = out->size();
  for (const PageRange& r : runs_) AppendMerged(out, first, r.start, r.end);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<DirtyTracker>> NewMprotectTracker() {
  return std::unique_ptr<DirtyTracker>(std::make_unique<MprotectTracker>());
}

}  // namespace spare::region::internal
