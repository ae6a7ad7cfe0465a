// The SIGSEGV handler shared by the mprotect tracker and the uffd tracker's
// chunk guard (see write_fault.h).
//
// Ordering — why no write is lost. For a unit U:
//   handler:  (A1) set flag U, (B) mprotect(U, RW), (A2) set flag U
//   owner:    (X) fetch-and-clear flag U, then (Y) mprotect(U, READ), then
//             look at U's pages (the mprotect tracker reports U's page and
//             the caller copies it; the uffd guard PAGEMAP_SCANs U)
// ("set flag" = set the bitmap bit, then the summary bit; "clear" = clear
// the summary bit, then fetch-and-clear the bitmap word: see Take().) The
// owner only skips U when it took no flag for it.
//
// Take a write W into U and the last protection change of U before W. W did
// not fault on it, so it is some handler's B (U read-only since the owner's
// last Y would have faulted). That handler's A2 follows B, and its A1
// precedes it. Consider the first X after A2 in U's flag's modification
// order:
//   - It sees A2's flag (or A1's): the owner looks at U after its Y, which
//     comes after that X and therefore after B; Y and B are serialized by
//     the kernel, and no Y came between B and W (B was the last change), so
//     either Y is after W — and the look sees W — or W happened between X
//     and Y, when U was still writable: then too the look after Y sees W.
//   - An X between A1 and A2 cleared A1's flag instead: its Y is either
//     before B (then A2 sets the flag again after that X, and the case above
//     applies to the next X) or after B, hence after W, and its look sees W.
// So W is seen by the first collection whose X follows A2, or by an earlier
// one. A1 adds the property the uffd tracker has without this layer: a
// write W that happens before a collection starts (in any thread, e.g.
// another thread writing U while the faulting one is still between B and
// A2) is seen by that collection, because A1 happens before B, B before W,
// and W before the collection's X — X sees A1's flag unless an earlier X
// took it, and then the case analysis above puts W in an earlier or this
// collection. Without A1 such a write would slip to the next collection.
// The reverse orders lose writes: with only A1 (flag before B), X+Y can run
// between A1 and B, and B then leaves U writable with a clear flag; Y before
// X lets a fault set the flag in between and X then clears it while U stays
// writable.
//
// Summary bits: the handler sets the word bit, then the summary bit; Take()
// clears the summary bit, then takes the word. A summary bit seen clear
// means the handler has not yet reached its summary step, and the flag is
// found (with its summary bit) by the next Take; a word taken after its
// summary was cleared may contain flags whose summary set comes later, which
// only makes the next Take look at an empty word.
//
// Async-signal safety: the handler touches only lock-free atomics in static
// storage, mprotect(), sigaction(), raise() and write(). Ranges are published
// in a fixed table of slots; a handler announces itself in the slot's
// `users` count before trusting it, and the destructor waits for that count
// to drain before freeing the bitmap (Dekker-style, both sides seq_cst).
#include "region/write_fault.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>

#include "region/tracker_internal.h"

namespace spare::region::internal {
namespace {

using Word = std::atomic<uint64_t>;
static_assert(Word::is_always_lock_free && std::atomic<uintptr_t>::is_always_lock_free &&
                  std::atomic<uint32_t>::is_always_lock_free &&
                  std::atomic<Word*>::is_always_lock_free,
              "the SIGSEGV handler needs lock-free atomics");

constexpr size_t kMaxSlots = 256;  // published ranges per process

// One published range. `state` counts transitions: odd = live, even = free,
// so a value never repeats and a handler can tell whether the slot changed
// while it looked at it. Written only under g_mu.
struct Slot {
  std::atomic<uint64_t> state{0};
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uint32_t> shift{0};
  std::atomic<Word*> bits{nullptr};
  std::atomic<Word*> summary{nullptr};
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

void SetFlag(Word* bits, Word* summary, size_t u) {
  bits[u / 64].fetch_or(uint64_t{1} << (u % 64), std::memory_order_acq_rel);
  summary[u / 4096].fetch_or(uint64_t{1} << (u / 64 % 64), std::memory_order_acq_rel);
}

// Flags all `units` units (bitmap words first, then the summary).
void SetAllFlags(Word* bits, Word* summary, size_t units) {
  const size_t words = (units + 63) / 64;
  for (size_t w = 0; w < words; ++w) {
    const size_t n = std::min<size_t>(64, units - w * 64);
    bits[w].fetch_or(n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1, std::memory_order_acq_rel);
  }
  for (size_t s = 0; s * 64 < words; ++s) {
    const size_t n = std::min<size_t>(64, words - s * 64);
    summary[s].fetch_or(n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1, std::memory_order_acq_rel);
  }
}

// Returns true if addr lies in a published range and the write may be
// retried.
bool MarkWritten(uintptr_t addr) {
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
      const unsigned shift = s.shift.load(std::memory_order_relaxed);
      const size_t u = (addr >> shift) - (start >> shift);
      const uintptr_t lo = std::max(start, (addr >> shift) << shift);
      const uintptr_t hi = std::min(end, ((addr >> shift) + 1) << shift);
      Word* bits = s.bits.load(std::memory_order_relaxed);
      Word* summary = s.summary.load(std::memory_order_relaxed);
      // (A1), (B), (A2): see the file comment. A2 is set only if mprotect
      // succeeded, so no optimizer can move it above B. A build without A2
      // loses writes on every run of WritesAreNeverLost/mprotect ("write
      // lost on page N word 0"); suspect a stale object first.
      SetFlag(bits, summary, u);
      if (::mprotect(reinterpret_cast<void*>(lo), hi - lo, PROT_READ | PROT_WRITE) == 0) {
        SetFlag(bits, summary, u);
      } else {
        // Making one unit writable splits a mapping, which fails at
        // vm.max_map_count. Making the whole range writable merges its
        // mappings instead; then every unit counts as written (the same
        // A1, B, A2 for all of them): one collection reports and
        // re-protects the whole range, and nothing is lost.
        const size_t units = ((end - 1) >> shift) - (start >> shift) + 1;
        SetAllFlags(bits, summary, units);
        if (::mprotect(reinterpret_cast<void*>(start), end - start, PROT_READ | PROT_WRITE) == 0) {
          SetAllFlags(bits, summary, units);
        } else {
          WriteStderr(
              "spare: dirty tracker cannot make tracked memory writable; the write will "
              "crash\n");
          retry = false;
        }
      }
    }
    // else: the range was removed meanwhile; its owner made it writable
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
      info->si_code == SEGV_ACCERR && MarkWritten(reinterpret_cast<uintptr_t>(info->si_addr));
  errno = saved_errno;
  if (!ours) Chain(sig, info, ctx);
}

Status InstallHandlerLocked() {
  if (g_installed) return Status::Ok();
  // Read the old action first so g_prev is complete before any fault can
  // reach OnSegv.
  if (::sigaction(SIGSEGV, nullptr, &g_prev) != 0) {
    return Status::FromErrno("dirty tracker: sigaction(SIGSEGV) query", errno);
  }
  struct sigaction sa = {};
  sa.sa_sigaction = OnSegv;
  sigemptyset(&sa.sa_mask);
  // SA_ONSTACK: threads with an alternate stack (e.g. for stack overflow
  // reports) keep using it.
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  if (::sigaction(SIGSEGV, &sa, nullptr) != 0) {
    return Status::FromErrno("dirty tracker: sigaction(SIGSEGV) install", errno);
  }
  g_installed = true;
  return Status::Ok();
}

}  // namespace

WriteFaults::WriteFaults(PageRange range, unsigned shift, size_t units, size_t slot)
    : range_(range),
      shift_(shift),
      units_(units),
      slot_(slot),
      bits_(std::make_unique<Word[]>((units + 63) / 64)),  // value-initialized: no flags
      summary_(std::make_unique<Word[]>((units + 4095) / 4096)) {}

Result<std::unique_ptr<WriteFaults>> WriteFaults::Publish(PageRange range, unsigned unit_shift,
                                                          std::string_view who) {
  const std::string what = std::string(who) + ": " + DescribeRange(range.start, range.end);
  const size_t units = ((range.end - 1) >> unit_shift) - (range.start >> unit_shift) + 1;
  std::lock_guard lock(g_mu);
  SPARE_RETURN_IF_ERROR(InstallHandlerLocked());
  size_t slot = kMaxSlots;
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
  std::unique_ptr<WriteFaults> w(new WriteFaults(range, unit_shift, units, slot));
  Slot& s = g_slots[slot];
  s.start.store(range.start, std::memory_order_release);
  s.end.store(range.end, std::memory_order_release);
  s.shift.store(unit_shift, std::memory_order_release);
  s.bits.store(w->bits_.get(), std::memory_order_release);
  s.summary.store(w->summary_.get(), std::memory_order_release);
  s.state.fetch_add(1, std::memory_order_release);  // now live
  return w;
}

WriteFaults::~WriteFaults() {
  std::lock_guard lock(g_mu);
  Slot& s = g_slots[slot_];
  s.state.fetch_add(1, std::memory_order_seq_cst);
  while (s.users.load(std::memory_order_seq_cst) != 0) sched_yield();
  s.bits.store(nullptr, std::memory_order_relaxed);
  s.summary.store(nullptr, std::memory_order_relaxed);
}

PageRange WriteFaults::Span(size_t u) const {
  const uintptr_t first = (range_.start >> shift_) + u;
  return {std::max(range_.start, first << shift_), std::min(range_.end, (first + 1) << shift_)};
}

void WriteFaults::Flag(size_t u) { SetFlag(bits_.get(), summary_.get(), u); }

}  // namespace spare::region::internal
