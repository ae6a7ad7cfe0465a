// No lost write under concurrency, for both trackers.
//
// Writer threads store increasing sequence numbers into random words of a
// tracked region while the main thread does what the commit path does:
// Collect(), then copy the reported pages into a shadow image. After the
// writers stop, one last Collect() + copy must leave the shadow equal to the
// live region. A write that no collection reported after it happened leaves
// an older value in the shadow, and the test names the page and both values.
//
// It does catch the bugs it is meant for: reversing the two steps of the
// mprotect tracker's Collect() or of its SIGSEGV handler, or scanning
// without PM_SCAN_WP_MATCHING and write-protecting afterwards, each failed
// every run when tried. The collector never waits for the writers, so
// collections overlap writes even on a loaded machine; if too few did, the
// test reports itself skipped rather than passing without proof.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "region/tracker_fixture.h"

namespace spare::region::testing {
namespace {

constexpr size_t kWordsPerPage = kPageSize / sizeof(uint64_t);

uint64_t Load(uint64_t* w) { return std::atomic_ref<uint64_t>(*w).load(std::memory_order_relaxed); }

// Picks the page a burst starts on from a random number.
using PagePicker = size_t (*)(uint64_t x, size_t pages, size_t first_boundary);

size_t AnyPage(uint64_t x, size_t pages, size_t) { return x % pages; }

// Three bursts in four start on one of the two pages before a 2 MiB chunk
// boundary (page `first_boundary` + k * 512) or a boundary of the guard's
// 64 KiB units (16 pages), so the burst often spills into the next chunk
// or unit; the rest anywhere.
size_t NearChunkBoundary(uint64_t x, size_t pages, size_t first_boundary) {
  const size_t step = (x >> 44) % 2 == 0 ? 512 : 16;
  if ((x >> 40) % 4 == 0 || pages <= first_boundary) return x % pages;
  const size_t boundaries = (pages - first_boundary + step - 1) / step;
  const size_t b = first_boundary + ((x >> 8) % boundaries) * step;
  const size_t page = b - 1 - (x >> 20) % 2;
  return page < pages ? page : x % pages;
}

void WriterLoop(uint64_t id, uint64_t* live, size_t pages, size_t first_boundary, PagePicker pick,
                const std::atomic<bool>& stop, std::atomic<uint64_t>& writes) {
  uint64_t x = id * 0x9E3779B97F4A7C15ULL + 1;
  uint64_t seq = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const size_t page = pick(x, pages, first_boundary);
    // A short burst on one page, sometimes spilling into the next.
    for (size_t k = 0; k < 3; ++k) {
      const size_t word = page * kWordsPerPage + ((x >> 20) + k * 601) % (2 * kWordsPerPage);
      if (word >= pages * kWordsPerPage) break;
      std::atomic_ref<uint64_t>(live[word]).store((id << 56) | ++seq, std::memory_order_relaxed);
    }
    // Published after the burst, so a collector that sees the count move
    // knows a whole burst happened since it last looked.
    writes.fetch_add(1, std::memory_order_relaxed);
  }
}

class TrackerConcurrencyTest : public TrackerTest {
 protected:
  // Races kWriters writers picking pages with `pick` against collections
  // of a region of `pages`, and checks that none of their writes is lost.
  void RunWriters(size_t pages, PagePicker pick);

  // Collections after which some chunk was guarded (uffd only).
  size_t guarded_collections_ = 0;
};

TEST_P(TrackerConcurrencyTest, WritesAreNeverLost) { RunWriters(512, AnyPage); }

// The uffd tracker with a chunk guard that guards every chunk after one
// clean collection and keeps guarding it however soon it is written: every
// collection takes the flags of written chunks (X), re-protects them (Y)
// and scans them, and every chunk a collection found clean is guarded by
// the next one, while writers keep hitting chunk boundaries. For mprotect
// the same boundary-heavy writes (its units are pages).
class ChunkGuardConcurrencyTest : public TrackerConcurrencyTest {
 protected:
  internal::ChunkGuardPolicy GuardPolicy() const override {
    return {.enabled = true, .initial_need = 1, .max_need = 1, .break_even = 0};
  }
};

TEST_P(ChunkGuardConcurrencyTest, WritesAtChunkBoundariesAreNeverLost) {
  RunWriters(8 * 512 + 100, NearChunkBoundary);
  // A chunk is guarded only after a collection found it clean. When the
  // collector is much slower than the writers (sanitizer builds), every
  // chunk is written between two collections and none is ever guarded:
  // the run then proved nothing about the guard (no write was lost, which
  // RunWriters checked) and says so instead of passing.
  if (tracker().name() == "uffd-wp" && guarded_collections_ < 20) {
    GTEST_SKIP() << "only " << guarded_collections_
                 << " collections guarded a chunk (need 20): the writers outran the collector";
  }
}

void TrackerConcurrencyTest::RunWriters(size_t pages, PagePicker pick) {
  constexpr int kWriters = 2;
  constexpr uintptr_t kChunk = uintptr_t{2} << 20;
  TestRegion& r = Tracked(true, pages);
  const size_t first_boundary =
      ((r.addr(0) + kChunk - 1) / kChunk * kChunk - r.addr(0)) / kPageSize;
  auto* live = static_cast<uint64_t*>(r.base());
  std::vector<uint64_t> shadow(pages * kWordsPerPage, 0);  // memfd starts zeroed

  auto copy_reported = [&](const std::vector<PageRange>& ranges) {
    for (const PageRange& pr : ranges) {
      const size_t w0 = (pr.start - r.addr(0)) / sizeof(uint64_t);
      for (size_t w = w0; w < w0 + pr.bytes() / sizeof(uint64_t); ++w) shadow[w] = Load(&live[w]);
    }
  };

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0};
  std::vector<std::thread> writers;
  for (int i = 0; i < kWriters; ++i) {
    writers.emplace_back(WriterLoop, i + 1, live, pages, first_boundary, pick, std::cref(stop),
                         std::ref(writes));
  }
  // Collect while the writers run. Only collections during which a writer
  // made progress can catch a race, so run until enough of them happened
  // (the machine may be loaded and give the writers little CPU).
  size_t collections = 0, racing = 0, nonempty = 0, pages_reported = 0;
  const auto start = std::chrono::steady_clock::now();
  // Stop after 300 racing collections; past 3 s settle for 20; give up at
  // 30 s (sanitizer builds on a loaded machine collect slowly).
  auto enough = [&] {
    const auto t = std::chrono::steady_clock::now() - start;
    return racing >= 300 || (racing >= 20 && t > std::chrono::seconds(3)) ||
           t > std::chrono::seconds(30);
  };
  while (!enough()) {
    const uint64_t before = writes.load();
    std::vector<PageRange> got = CollectOrDie(tracker(), r);
    racing += writes.load() != before;
    copy_reported(got);
    ++collections;
    guarded_collections_ += internal::LastCollectStats(tracker()).chunks_guarded > 0;
    nonempty += !got.empty();
    for (const PageRange& pr : got) pages_reported += pr.bytes() / kPageSize;
  }
  stop = true;
  for (std::thread& t : writers) t.join();
  copy_reported(CollectOrDie(tracker(), r));
  EXPECT_EQ(CollectOrDie(tracker(), r), std::vector<PageRange>{});

  size_t lost_pages = 0;
  for (size_t p = 0; p < pages; ++p) {
    for (size_t w = p * kWordsPerPage; w < (p + 1) * kWordsPerPage; ++w) {
      if (shadow[w] != live[w]) {
        if (++lost_pages <= 5) {
          ADD_FAILURE() << "write lost on page " << p << " word " << w % kWordsPerPage
                        << ": live 0x" << std::hex << live[w] << ", last copied 0x" << shadow[w];
        }
        break;
      }
    }
  }
  EXPECT_EQ(lost_pages, 0u);
  std::printf(
      "[  tracker ] %s: %llu write bursts, %zu collections (%zu non-empty, %zu raced with "
      "writers), %zu pages reported\n",
      std::string(tracker().name()).c_str(), static_cast<unsigned long long>(writes.load()),
      collections, nonempty, racing, pages_reported);
  const internal::CollectStats stats = internal::LastCollectStats(tracker());
  if (tracker().name() == "uffd-wp") {
    std::printf("[  tracker ] last collection: %zu chunks scanned, %zu guarded\n",
                stats.chunks_scanned, stats.chunks_guarded);
  }
  // The check above only means something if writing and collecting
  // overlapped; on a machine too busy to run them at once, say so.
  EXPECT_GE(nonempty, 20u);
  if (racing < 20) GTEST_SKIP() << "only " << racing << " collections overlapped a writer";
}

SPARE_INSTANTIATE_TRACKER_TESTS(TrackerConcurrencyTest);
SPARE_INSTANTIATE_TRACKER_TESTS(ChunkGuardConcurrencyTest);

}  // namespace
}  // namespace spare::region::testing
