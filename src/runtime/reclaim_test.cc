#include "runtime/reclaim.h"

#include <gtest/gtest.h>

namespace spare {

void PrintTo(const PageSpan& s, std::ostream* os) {
  *os << "{r" << s.region << " " << s.offset << "+" << s.length << "}";
}

namespace {

using Spans = std::vector<PageSpan>;
constexpr uint64_t kP = 4096;
constexpr uint64_t kSec = 1'000'000'000;

PageSpan Pages(uint32_t region, uint64_t first, uint64_t count) {
  return {region, first * kP, count * kP};
}

TEST(SpanSetsTest, SubtractCutsHolesAndKeepsRegionsApart) {
  Spans a{Pages(0, 0, 10), Pages(0, 20, 5), Pages(1, 0, 4)};
  Spans b{Pages(0, 2, 3), Pages(0, 8, 14), Pages(1, 4, 4), Pages(2, 0, 1)};
  EXPECT_EQ(SubtractSpans(a, b),
            (Spans{Pages(0, 0, 2), Pages(0, 5, 3), Pages(0, 22, 3), Pages(1, 0, 4)}));
  EXPECT_EQ(SubtractSpans(a, a), Spans{});
  EXPECT_EQ(SubtractSpans(a, Spans{}), a);
  EXPECT_EQ(SubtractSpans(Spans{}, b), Spans{});
}

TEST(SpanSetsTest, UnionSortsAndMergesAdjacent) {
  Spans a{Pages(1, 0, 2), Pages(0, 4, 2)};
  Spans b{Pages(0, 0, 4), Pages(1, 1, 3)};
  EXPECT_EQ(UnionSpans(a, b), (Spans{Pages(0, 0, 6), Pages(1, 0, 4)}));
}

Spans Take(Reclaimer& r, uint64_t durable, uint64_t now) {
  Spans out;
  r.Take(durable, now, &out);
  return out;
}

TEST(ReclaimerTest, DropsPagesCleanForAWholeInterval) {
  Reclaimer r({.clean_after_ns = kSec, .budget_bytes = 1 << 30, .budget_spans = 1000});
  EXPECT_EQ(Take(r, 0, 0), Spans{});  // starts the first interval
  Spans e1{Pages(0, 0, 4)}, e2{Pages(0, 10, 1)};
  r.Written(1, e1);
  r.Written(2, e2);
  EXPECT_EQ(Take(r, 2, kSec / 2), Spans{}) << "written within this interval";
  EXPECT_EQ(Take(r, 2, kSec), Spans{}) << "first swap: nothing older yet";
  Spans e3{Pages(0, 10, 1)};  // page 10 written again in interval 2
  r.Written(3, e3);
  EXPECT_EQ(Take(r, 3, 2 * kSec - 1), Spans{});
  EXPECT_EQ(Take(r, 3, 2 * kSec), Spans{Pages(0, 0, 4)}) << "clean for an interval";
  EXPECT_EQ(Take(r, 3, 3 * kSec), Spans{Pages(0, 10, 1)}) << "clean since interval 2";
  EXPECT_EQ(Take(r, 3, 4 * kSec), Spans{});
}

TEST(ReclaimerTest, WaitsUntilTheOldGenerationIsDurable) {
  Reclaimer r({.clean_after_ns = kSec, .budget_bytes = 1 << 30, .budget_spans = 1000});
  (void)Take(r, 0, 0);
  Spans e1{Pages(0, 0, 1)};
  r.Written(1, e1);
  (void)Take(r, 0, kSec);          // swap: old = {epoch 1}
  EXPECT_EQ(Take(r, 0, 2 * kSec), Spans{}) << "epoch 1 is not in the image yet";
  EXPECT_EQ(Take(r, 1, 2 * kSec), Spans{Pages(0, 0, 1)});
}

TEST(ReclaimerTest, ShippingAgainWithdrawsADroppablePage) {
  Reclaimer r({.clean_after_ns = kSec, .budget_bytes = 2 * kP, .budget_spans = 1000});
  (void)Take(r, 0, 0);
  Spans e1{Pages(0, 0, 8)};
  r.Written(1, e1);
  (void)Take(r, 1, kSec);
  EXPECT_EQ(Take(r, 1, 2 * kSec), Spans{Pages(0, 0, 2)}) << "budget: 2 pages per Take";
  Spans again{Pages(0, 3, 1)};
  r.Written(2, again);  // collected for epoch 2
  Spans e2{Pages(0, 5, 2)};
  r.Written(2, e2);
  EXPECT_EQ(Take(r, 2, 2 * kSec + 2), (Spans{Pages(0, 2, 1), Pages(0, 4, 1)}));
  EXPECT_EQ(Take(r, 2, 2 * kSec + 3), Spans{Pages(0, 7, 1)});
  EXPECT_EQ(r.droppable_bytes(), 0u);
}

TEST(ReclaimerTest, SpanBudgetBoundsOneTake) {
  Reclaimer r({.clean_after_ns = kSec, .budget_bytes = 1 << 30, .budget_spans = 2});
  (void)Take(r, 0, 0);
  Spans e1{Pages(0, 0, 1), Pages(0, 2, 1), Pages(0, 4, 1)};
  r.Written(1, e1);
  (void)Take(r, 1, kSec);
  EXPECT_EQ(Take(r, 1, 2 * kSec), (Spans{Pages(0, 0, 1), Pages(0, 2, 1)}));
  EXPECT_EQ(Take(r, 1, 2 * kSec), Spans{Pages(0, 4, 1)});
}

// The idle path (runtime/idle.cc): Advance() moves the generations by time
// alone, NextWakeNs() says when to come back, and Take(kIdle) uses the
// larger idle budget.
TEST(ReclaimerTest, IdleAdvanceWakeAndBudget) {
  Reclaimer r({.clean_after_ns = kSec,
               .budget_bytes = 1 * kP,
               .budget_spans = 1000,
               .idle_budget_bytes = 3 * kP,
               .idle_budget_spans = 1000});
  EXPECT_EQ(r.NextWakeNs(0), UINT64_MAX) << "nothing tracked";
  r.Advance(0, 0);  // starts the first interval
  Spans e1{Pages(0, 0, 8)};
  r.Written(1, e1);
  EXPECT_EQ(r.NextWakeNs(kSec / 2), kSec) << "the first swap";
  r.Advance(1, kSec);
  EXPECT_FALSE(r.has_droppable());
  EXPECT_EQ(r.NextWakeNs(kSec), 2 * kSec) << "the swap that makes epoch 1 droppable";
  r.Advance(0, 2 * kSec);  // epoch 1 not durable: no swap
  EXPECT_FALSE(r.has_droppable());
  EXPECT_EQ(r.NextWakeNs(2 * kSec), 3 * kSec) << "overdue: retry an interval later";
  r.Advance(1, 2 * kSec + 5);
  ASSERT_TRUE(r.has_droppable());
  EXPECT_EQ(r.NextWakeNs(2 * kSec + 6), 2 * kSec + 6) << "droppable: at once";
  Spans out;
  r.Take(1, 2 * kSec + 6, &out, Reclaimer::Budget::kIdle);
  EXPECT_EQ(out, Spans{Pages(0, 0, 3)}) << "the idle budget";
  EXPECT_EQ(Take(r, 1, 2 * kSec + 7), Spans{Pages(0, 3, 1)}) << "the commit budget";
  out.clear();
  r.Take(1, 2 * kSec + 8, &out, Reclaimer::Budget::kIdle);
  out.clear();
  r.Take(1, 2 * kSec + 9, &out, Reclaimer::Budget::kIdle);
  EXPECT_EQ(out, Spans{Pages(0, 7, 1)});
  EXPECT_EQ(r.NextWakeNs(2 * kSec + 9), UINT64_MAX) << "all dropped, nothing tracked";
}

// Drops the program undoes (it writes the pages again soon after) stretch
// the window up to the maximum; drops that stick shrink it; a quiet spell
// with nothing to judge leaves it alone.
TEST(ReclaimerTest, WindowFollowsRefaults) {
  Reclaimer r({.clean_after_ns = kSec, .max_clean_after_ns = 4 * kSec,
               .budget_bytes = 1 << 30, .budget_spans = 1000});
  const Spans hot{Pages(0, 0, 100)};
  uint64_t t = 0, epoch = 1;
  auto swap = [&] { return Take(r, epoch, t += r.window_ns()); };  // one interval later
  (void)Take(r, 0, 0);
  r.Written(epoch, hot);
  EXPECT_EQ(swap(), Spans{});
  EXPECT_EQ(swap(), hot) << "clean for a whole interval";
  r.Written(++epoch, hot);  // every dropped page written again at once
  EXPECT_EQ(r.refaults(), 100u);
  EXPECT_EQ(swap(), Spans{});
  EXPECT_EQ(r.window_ns(), kSec) << "judged one swap later";
  EXPECT_EQ(swap(), hot) << "clean again";
  EXPECT_EQ(r.window_ns(), 2 * kSec) << "all of the judged drops came back";
  // Keep undoing every drop: the window doubles once more and stops at the maximum.
  EXPECT_EQ(swap(), Spans{});
  r.Written(++epoch, hot);
  EXPECT_EQ(r.refaults(), 200u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(swap(), Spans{}) << i << ": written in every interval";
    r.Written(++epoch, hot);
  }
  EXPECT_EQ(r.window_ns(), 4 * kSec);
  // The writes stop: the pages are dropped once, the drops stick, the
  // window halves; then there is nothing more to judge and it stays.
  EXPECT_EQ(swap(), Spans{});
  EXPECT_EQ(swap(), hot);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(swap(), Spans{});
  EXPECT_EQ(r.window_ns(), 2 * kSec);
  // More drops that stick: down to the minimum, never below.
  for (uint64_t first : {1000, 2000, 3000}) {
    r.Written(++epoch, Spans{Pages(0, first, 100)});
    for (int i = 0; i < 4; ++i) (void)swap();
  }
  EXPECT_EQ(r.window_ns(), kSec);
  EXPECT_EQ(r.refaults(), 200u);
  // Fewer than 64 judged drops are not evidence.
  const Spans few{Pages(0, 5000, 10)};
  for (int i = 0; i < 4; ++i) {
    r.Written(++epoch, few);
    for (int k = 0; k < 3; ++k) (void)swap();
  }
  EXPECT_EQ(r.window_ns(), kSec);
  EXPECT_EQ(r.refaults(), 230u);
}

TEST(ReclaimerTest, DisabledNeverWakes) {
  Reclaimer r({.clean_after_ns = 0});
  Spans e1{Pages(0, 0, 1)};
  r.Written(1, e1);
  r.Advance(1, kSec);
  EXPECT_EQ(r.NextWakeNs(kSec), UINT64_MAX);
}

TEST(ReclaimerTest, DisabledNeverDrops) {
  Reclaimer r({.clean_after_ns = 0});
  Spans e1{Pages(0, 0, 1)};
  r.Written(1, e1);
  for (uint64_t t : {kSec, 2 * kSec, 3 * kSec}) EXPECT_EQ(Take(r, 1, t), Spans{});
}

}  // namespace
}  // namespace spare
