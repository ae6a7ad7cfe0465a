// region/write_fault.h — the process-wide SIGSEGV handler that records the
// first write into a read-only part of a tracked range. Private to
// src/region: the mprotect tracker uses it with one unit per page, the uffd
// tracker's chunk guard with one unit per 2 MiB chunk.
//
// A published range is divided into units of 2^shift bytes, aligned to
// absolute addresses and clipped to the range. The owner makes units
// read-only with mprotect(); a write into one faults, and the handler does
//   (A1) set the unit's flag, (B) mprotect(unit, RW), (A2) set the flag
// and lets the write run again. The owner takes flags with Take() (X) and
// then re-protects the units it took (Y). Why that order loses no write is
// in write_fault.cc; in short: a write W into a unit U is always followed,
// in U's flag, by a set that no X has consumed before the next Y of U, and
// a write that happens before X (in any thread) is preceded by A1.
//
// Flags are a bitmap plus one summary bit per 64-bit bitmap word, set after
// the word; Take() reads only the summary and the words it marks, so it
// costs O(flagged units + units/4096), not O(units).
//
// Caveats, for every user of this handler:
//   - The kernel does not raise SIGSEGV for its own accesses: a system call
//     that writes into a read-only unit (read(2), recv(2), ...) fails with
//     EFAULT.
//   - The handler is process-wide and installed on first Publish(). A
//     handler installed later must chain to it; threads must not block
//     SIGSEGV; nothing else may change the protection of tracked memory.
//   - Each read-only or re-enabled unit can split a mapping (vm.max_map_count).
//
// Threading: Publish/destroy/Take/Peek/Flag from the owner's thread; the
// handler runs in any thread at any time.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "region/tracker.h"
#include "spare/status.h"

namespace spare::region::internal {

class WriteFaults {
 public:
  // Makes faults in `range` ours from now on (installing the handler on
  // first use). `who` names the caller in errors. kResourceExhausted when
  // all 256 process-wide slots are used, kInvalidArgument on overlap with a
  // published range.
  static Result<std::unique_ptr<WriteFaults>> Publish(PageRange range, unsigned unit_shift,
                                                      std::string_view who);
  // Unpublishes, waiting until no handler uses the range.
  // REQUIRES: the range is writable again (a fault after this would crash).
  ~WriteFaults();
  WriteFaults(const WriteFaults&) = delete;
  WriteFaults& operator=(const WriteFaults&) = delete;

  size_t units() const { return units_; }
  size_t UnitOf(uintptr_t addr) const { return (addr >> shift_) - (range_.start >> shift_); }
  // The bytes of unit u inside the range.
  PageRange Span(size_t u) const;

  // (X) Fetch-and-clears the flags of units [u0, u1) and calls
  // on_run(first, count) for each run of flagged units within one bitmap
  // word, in ascending order. Returns the number of flag words read (the
  // summary words and the marked bitmap words), for measurements.
  template <typename OnRun>
  size_t Take(size_t u0, size_t u1, OnRun&& on_run);
  // Whether unit u is flagged, without clearing it.
  bool Peek(size_t u) const {
    return (bits_[u / 64].load(std::memory_order_acquire) >> (u % 64)) & 1;
  }
  // Sets unit u's flag (and its summary bit), as the handler does: to give
  // back flags taken but not acted on.
  void Flag(size_t u);

 private:
  using Word = std::atomic<uint64_t>;
  WriteFaults(PageRange range, unsigned shift, size_t units, size_t slot);

  const PageRange range_;
  const unsigned shift_;
  const size_t units_;
  const size_t slot_;
  std::unique_ptr<Word[]> bits_;     // one bit per unit
  std::unique_ptr<Word[]> summary_;  // bit w: bits_[w] may be non-zero
};

template <typename OnRun>
size_t WriteFaults::Take(size_t u0, size_t u1, OnRun&& on_run) {
  size_t reads = 0;
  if (u0 >= u1) return reads;
  const size_t w0 = u0 / 64, w1 = (u1 + 63) / 64;  // bitmap words touching [u0, u1)
  for (size_t s = w0 / 64; s * 64 < w1; ++s) {
    // Summary bits of words in [w0, w1); `whole` for words wholly inside
    // [u0, u1): only those may have their summary bit cleared, a word
    // partly outside may keep flags for units this Take does not own.
    uint64_t in = ~uint64_t{0};
    if (s == w0 / 64) in &= ~uint64_t{0} << (w0 % 64);
    if ((s + 1) * 64 > w1) in &= ~uint64_t{0} >> ((s + 1) * 64 - w1);
    uint64_t whole = in;
    if (u0 % 64 != 0 && w0 / 64 == s) whole &= ~(uint64_t{1} << (w0 % 64));
    if (u1 % 64 != 0 && u1 != units_ && (w1 - 1) / 64 == s)
      whole &= ~(uint64_t{1} << ((w1 - 1) % 64));
    ++reads;
    // A load that sees nothing is as good as a fetch-and-clear that finds
    // nothing, and keeps a clean range from bouncing the line.
    uint64_t marked = summary_[s].load(std::memory_order_acquire) & in;
    if (marked == 0) continue;
    // Clear the summary (Xs) before taking the words (Xp): the handler sets
    // the word before the summary, so a word set after Xs keeps its summary
    // bit for the next Take.
    if ((marked & whole) != 0) {
      marked = (summary_[s].fetch_and(~(marked & whole), std::memory_order_acq_rel) & whole) |
               (marked & ~whole);
    }
    while (marked != 0) {
      const size_t w = s * 64 + static_cast<size_t>(std::countr_zero(marked));
      marked &= marked - 1;
      uint64_t mask = ~uint64_t{0};
      if (w == u0 / 64) mask &= ~uint64_t{0} << (u0 % 64);
      if ((w + 1) * 64 > u1) mask &= ~uint64_t{0} >> ((w + 1) * 64 - u1);
      ++reads;
      if ((bits_[w].load(std::memory_order_acquire) & mask) == 0) continue;
      uint64_t got = bits_[w].fetch_and(~mask, std::memory_order_acq_rel) & mask;
      while (got != 0) {
        const int lo = std::countr_zero(got);
        const int n = std::countr_one(got >> lo);
        on_run(w * 64 + static_cast<size_t>(lo), static_cast<size_t>(n));
        got &= n == 64 ? 0 : ~(((uint64_t{1} << n) - 1) << lo);
      }
    }
  }
  return reads;
}

}  // namespace spare::region::internal
