// runtime/reclaim.h — which private copies of region pages may be dropped.
//
// A region maps its committed image MAP_PRIVATE, so every page the program
// writes keeps a private copy after its epoch is applied: without help the
// instance's extra memory is everything it ever wrote. DESIGN §2: drop the
// private copies of pages that stayed clean for a while after their epoch
// became durable; the page then reads from the image again (identical
// bytes), stays write-protected, and its next write is tracked as usual.
//
// Two generations of written pages, swapped every `clean_after`:
//   young  pages collected since the last swap
//   old    pages collected in the interval before
// At a swap, old − young (written in the previous interval, not in this
// one) becomes droppable once every epoch of the old generation is durable.
// Droppable pages leave that list again when collected again (written
// meanwhile), and are handed out a budget at a time so one
// commit never pays for a large drop.
//
// The window adapts to the write pattern (refaults). A page written again
// soon after its copy was dropped paid for nothing: a madvise now, a
// copy-on-write fault from the image on the write, and the drop again
// later. Under random writes over a large data set most pages come back
// within seconds: with a fixed 1 s window spare-kv spent 2.3 s of CPU per
// 200k SETs at -P 16 over 1 GiB, 1.0 s with no drops at all
// (docs/BENCHMARKS.md, issue 7). So the
// reclaimer remembers which pages it dropped in the last two intervals
// (a bit per page) and counts a refault when one of them is written. At
// each swap it judges the drops of the interval before last (they had one
// to two intervals to come back): when more than one in eight came back,
// the window doubles, up to max_clean_after_ns; when fewer than one in 32
// did, it halves, down to clean_after_ns. Memory then follows the write working
// set as seen over the current window: an idle program still gets its
// copies dropped one (shrinking) window after its last write.
//
// Pure bookkeeping: the caller does the madvise(MADV_DONTNEED), at a
// quiescent point, right after collecting — inside commit() (a small
// budget) and from poll() while the program is idle (runtime/idle.cc, a
// larger one, paced by a timer from NextWakeNs()). Dropping a page that
// was written and not yet collected, or that another thread is writing,
// would lose that write; both callers' contracts say nothing writes the
// regions meanwhile.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "spare/status.h"

namespace spare {

struct PageSpan {  // bytes [offset, offset + length) of region `region`
  uint32_t region = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const PageSpan&) const = default;
};

class Reclaimer {
 public:
  struct Options {
    uint64_t clean_after_ns = 1'000'000'000;  // the shortest window; 0: never drop
    uint64_t max_clean_after_ns = 0;          // the longest; 0: 16 x clean_after_ns
    uint64_t budget_bytes = 2u << 20;         // per Take(kCommit)
    size_t budget_spans = 64;                 // per Take(kCommit)
    // An idle pass has no commit to slow down, only the event loop's next
    // turn: MADV_DONTNEED frees ~10 GiB/s here (16 MiB in ~1.8 ms, 64 MiB
    // in ~6 ms; docs/BENCHMARKS.md), so 16 MiB keeps one pass near 2 ms.
    uint64_t idle_budget_bytes = 16u << 20;  // per Take(kIdle)
    size_t idle_budget_spans = 512;          // per Take(kIdle): ~2 us per madvise
  };
  enum class Budget { kCommit, kIdle };

  explicit Reclaimer(Options options) : options_(options) {}

  bool enabled() const { return options_.clean_after_ns != 0; }

  // Pages just collected (written since the previous collection), which
  // epoch `epoch` will carry to the image (the next one shipped, whether
  // this commit ships or defers).
  void Written(uint64_t epoch, std::span<const PageSpan> spans);

  // Swaps the generations when an interval has passed and the old one is
  // durable (`durable` = the newest durable epoch). Take() does it too; the
  // idle path calls it alone to learn whether anything is droppable before
  // paying for a collection.
  void Advance(uint64_t durable, uint64_t now_ns);

  // Advance(), then appends to *out the spans to drop now, within the
  // budget. REQUIRES: every page written since the caller's last Written()
  // was collected and passed to Written() first.
  void Take(uint64_t durable, uint64_t now_ns, std::vector<PageSpan>* out,
            Budget budget = Budget::kCommit);

  // When the idle path should run next, after an Advance() at now_ns:
  // now_ns if pages are droppable; the next swap if pages are tracked; if
  // that swap is overdue because the old generation is not durable yet,
  // one interval from now (a Durable message usually comes first);
  // UINT64_MAX when nothing is tracked or dropping is off.
  uint64_t NextWakeNs(uint64_t now_ns) const;

  bool has_droppable() const { return !droppable_.empty(); }
  uint64_t droppable_bytes() const;
  // How long a page must stay clean now (between the two bounds).
  uint64_t window_ns() const { return window_ns_; }
  // Pages written again within about two windows of their drop.
  uint64_t refaults() const { return refaults_total_; }

 private:
  // Pages dropped in the current and the previous interval, one bit per
  // page, per region (grown on demand).
  struct DropBits {
    std::vector<uint64_t> cur, prev;
  };
  void MarkDropped(const PageSpan& s);
  void CountRefaults(const PageSpan& s);
  void Adapt();

  Options options_;
  uint64_t window_ns_ = options_.clean_after_ns;
  std::vector<DropBits> bits_;
  // [0]: pages marked in cur, and those of them written again; [1]: prev.
  uint64_t drops_[2] = {0, 0}, refaults_[2] = {0, 0};
  uint64_t refaults_total_ = 0;
  uint64_t interval_start_ns_ = 0;
  bool started_ = false;
  std::vector<PageSpan> young_, old_, droppable_;
  uint64_t young_max_epoch_ = 0, old_max_epoch_ = 0;
};

// $SPARE_DROP_CLEAN_MS: how long a page must stay clean before its private
// copy is dropped, 0 = never; default 1000. kInvalidArgument names a bad
// value.
Result<uint64_t> DropCleanAfterNsFromEnv();

// Sorts by (region, offset) and merges overlapping or adjacent spans.
void NormalizeSpans(std::vector<PageSpan>* spans);
// Set operations on sorted, non-overlapping span lists.
std::vector<PageSpan> UnionSpans(std::span<const PageSpan> a, std::span<const PageSpan> b);
std::vector<PageSpan> SubtractSpans(std::span<const PageSpan> a, std::span<const PageSpan> b);

}  // namespace spare
