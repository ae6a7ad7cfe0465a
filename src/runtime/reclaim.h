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
// Pure bookkeeping: the caller (commit(), at a quiescent point, right after
// collecting) does the madvise(MADV_DONTNEED). Dropping a page that another
// thread is writing would lose that write; that is why it only happens
// inside commit(), whose contract is that nothing writes the regions
// meanwhile.
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
    uint64_t clean_after_ns = 1'000'000'000;  // 0: never drop
    uint64_t budget_bytes = 2u << 20;         // per Take()
    size_t budget_spans = 64;                 // per Take()
  };

  explicit Reclaimer(Options options) : options_(options) {}

  bool enabled() const { return options_.clean_after_ns != 0; }

  // Pages just collected (written since the previous collection), which
  // epoch `epoch` will carry to the image (the next one shipped, whether
  // this commit ships or defers).
  void Written(uint64_t epoch, std::span<const PageSpan> spans);

  // Appends to *out the spans to drop now, within the budget, given the
  // newest durable epoch. Advances the generations when due.
  void Take(uint64_t durable, uint64_t now_ns, std::vector<PageSpan>* out);

  uint64_t droppable_bytes() const;

 private:
  Options options_;
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
