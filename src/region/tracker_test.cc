// Semantics of both dirty trackers: exact dirty sets, re-protection, reads,
// ranges, private copies. Concurrency is in tracker_concurrency_test.cc.
#include <errno.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <optional>
#include <vector>

#include "region/tracker_fixture.h"

namespace spare::region::testing {
namespace {

using Ranges = std::vector<PageRange>;

void Write(char* p, char v = 1) { *reinterpret_cast<volatile char*>(p) = v; }
char Read(const char* p) { return *reinterpret_cast<const volatile char*>(p); }

TEST_P(TrackerTest, ReportsExactlyTheWrittenPagesMergedAndReprotects) {
  for (bool memfd : {true, false}) {
    SCOPED_TRACE(memfd ? "memfd MAP_PRIVATE" : "anonymous");
    TestRegion& r = Tracked(memfd, 128);
    for (size_t p : {0, 5, 6, 7, 100}) Write(r.page(p) + 17);
    EXPECT_EQ(CollectOrDie(tracker(), r),
              (Ranges{r.pages(0, 1), r.pages(5, 8), r.pages(100, 101)}));
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{});
    // Re-protected: the next write to an already reported page is seen again.
    Write(r.page(6) + 4000);
    Write(r.page(127));
    EXPECT_EQ(CollectOrDie(tracker(), r), (Ranges{r.pages(6, 7), r.pages(127, 128)}));
    Write(r.page(6));
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(6, 7)});
  }
}

TEST_P(TrackerTest, ReadOrUntouchedPagesAreNeverReported) {
  for (bool memfd : {true, false}) {
    SCOPED_TRACE(memfd ? "memfd MAP_PRIVATE" : "anonymous");
    TestRegion& r = Tracked(memfd, 64);
    int sum = 0;
    for (size_t p = 0; p < 64; ++p) sum += Read(r.page(p) + 9);
    EXPECT_EQ(sum, 0);
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{});
    Write(r.page(3));
    for (size_t p = 0; p < 64; ++p) sum += Read(r.page(p));
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(3, 4)});
  }
}

TEST_P(TrackerTest, PagesWrittenBeforeAddStartClean) {
  auto r = TestRegion::MemfdPrivate(16);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Write(r->page(1));
  Write(r->page(2));
  ASSERT_TRUE(tracker().Add(r->base(), r->len()).ok());
  EXPECT_EQ(CollectOrDie(tracker(), *r), Ranges{});
  Write(r->page(2) + 1);
  EXPECT_EQ(CollectOrDie(tracker(), *r), Ranges{r->pages(2, 3)});
  ASSERT_TRUE(tracker().Remove(r->base(), r->len()).ok());
}

TEST_P(TrackerTest, WritesGoToPrivatePagesNotToTheMemfd) {
  TestRegion& r = Tracked(true, 8);
  const std::vector<char> image(kPageSize, 'A');
  ASSERT_EQ(::pwrite(r.memfd(), image.data(), kPageSize, 2 * kPageSize), ssize_t(kPageSize));
  EXPECT_EQ(Read(r.page(2) + 5), 'A');  // the mapping shows the committed image
  Write(r.page(2) + 5, 'B');
  EXPECT_EQ(Read(r.page(2) + 5), 'B');
  std::vector<char> back(kPageSize);
  ASSERT_EQ(::pread(r.memfd(), back.data(), kPageSize, 2 * kPageSize), ssize_t(kPageSize));
  EXPECT_EQ(back, image);
  EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(2, 3)});
}

TEST_P(TrackerTest, CollectOfSubrangeTakesOnlyThatSubrange) {
  TestRegion& r = Tracked(true, 200);
  for (size_t p : {1, 10, 63, 64, 65, 130, 199}) Write(r.page(p));
  std::vector<PageRange> out;
  ASSERT_TRUE(tracker().Collect(r.page(10), 120 * kPageSize, &out).ok());  // pages [10, 130)
  EXPECT_EQ(out, (Ranges{r.pages(10, 11), r.pages(63, 66)}));
  EXPECT_EQ(CollectOrDie(tracker(), r),
            (Ranges{r.pages(1, 2), r.pages(130, 131), r.pages(199, 200)}));
}

TEST_P(TrackerTest, ManyRunsAndLongRuns) {
  // More runs than one PAGEMAP_SCAN output buffer holds, and runs that
  // cross 64-page bitmap words.
  constexpr size_t kPages = 10000;
  TestRegion& r = Tracked(true, kPages);
  Ranges want;
  for (size_t p = 0; p < 6000; p += 2) {
    Write(r.page(p));
    want.push_back(r.pages(p, p + 1));
  }
  for (size_t p = 6001; p < 6300; ++p) Write(r.page(p));
  want.push_back(r.pages(6001, 6300));
  for (size_t p = 9936; p < kPages; ++p) Write(r.page(p));
  want.push_back(r.pages(9936, kPages));
  EXPECT_EQ(CollectOrDie(tracker(), r), want);
  EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{});
}

TEST_P(TrackerTest, AppendsToOutWithoutMergingIntoEarlierEntries) {
  TestRegion& r = Tracked(true, 4);
  Write(r.page(0));
  std::vector<PageRange> out{PageRange{r.addr(0) - kPageSize, r.addr(0)}};
  ASSERT_TRUE(tracker().Collect(r.base(), r.len(), &out).ok());
  EXPECT_EQ(out, (Ranges{PageRange{r.addr(0) - kPageSize, r.addr(0)}, r.pages(0, 1)}));
}

TEST_P(TrackerTest, RangesAreIndependent) {
  TestRegion& a = Tracked(true, 8);
  TestRegion& b = Tracked(false, 8);
  Write(a.page(1));
  Write(b.page(2));
  EXPECT_EQ(CollectOrDie(tracker(), a), Ranges{a.pages(1, 2)});
  Write(a.page(3));
  EXPECT_EQ(CollectOrDie(tracker(), b), Ranges{b.pages(2, 3)});
  EXPECT_EQ(CollectOrDie(tracker(), a), Ranges{a.pages(3, 4)});
}

TEST_P(TrackerTest, AddRemoveAndArgumentErrors) {
  auto r = TestRegion::MemfdPrivate(8);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<PageRange> out;
  EXPECT_EQ(tracker().Collect(r->base(), r->len(), &out).code(), Code::kNotFound);
  EXPECT_EQ(tracker().Remove(r->base(), r->len()).code(), Code::kNotFound);
  EXPECT_EQ(tracker().Add(r->page(0) + 1, kPageSize).code(), Code::kInvalidArgument);
  EXPECT_EQ(tracker().Add(r->base(), 0).code(), Code::kInvalidArgument);

  ASSERT_TRUE(tracker().Add(r->base(), r->len()).ok());
  EXPECT_EQ(tracker().Add(r->page(2), kPageSize).code(), Code::kInvalidArgument);  // overlap
  EXPECT_EQ(tracker().Collect(r->page(4), 8 * kPageSize, &out).code(), Code::kNotFound);
  Write(r->page(1));
  EXPECT_EQ(tracker().Remove(r->page(0), kPageSize).code(), Code::kNotFound);  // not exact
  ASSERT_TRUE(tracker().Remove(r->base(), r->len()).ok());
  Write(r->page(2));  // untracked now: no fault, nothing recorded
  EXPECT_EQ(tracker().Collect(r->base(), r->len(), &out).code(), Code::kNotFound);
  EXPECT_EQ(tracker().Remove(r->base(), r->len()).code(), Code::kNotFound);

  ASSERT_TRUE(tracker().Add(r->base(), r->len()).ok());  // again: all clean
  EXPECT_EQ(CollectOrDie(tracker(), *r), Ranges{});
  Write(r->page(7));
  EXPECT_EQ(CollectOrDie(tracker(), *r), Ranges{r->pages(7, 8)});
  ASSERT_TRUE(tracker().Remove(r->base(), r->len()).ok());
  EXPECT_TRUE(out.empty());
}

TEST_P(TrackerTest, KernelWritesIntoTrackedMemory) {
  TestRegion& r = Tracked(true, 4);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  const ssize_t n = ::read(fds[0], r.page(2) + 100, 1);
  const int err = errno;
  ::close(fds[0]);
  ::close(fds[1]);
  if (tracker().name() == "uffd-wp") {
    // Async write-protect resolves kernel-mode faults too.
    ASSERT_EQ(n, 1);
    EXPECT_EQ(Read(r.page(2) + 100), 'x');
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(2, 3)});
  } else {
    // Known limit of the mprotect tracker: the kernel does not raise SIGSEGV
    // for its own accesses, so a syscall writing into a clean tracked page
    // fails with EFAULT. Callers must read into untracked buffers.
    EXPECT_EQ(n, -1);
    EXPECT_EQ(err, EFAULT);
    EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{});
  }
}

TEST_P(TrackerTest, DroppedPrivateCopyShowsTheImageAndIsTrackedAgain) {
  // libspare drops private copies of pages that stayed clean (MADV_DONTNEED):
  // the page reads from the memfd again and its next write must be seen.
  TestRegion& r = Tracked(true, 4);
  ASSERT_EQ(::pwrite(r.memfd(), "image", 5, kPageSize), 5);
  Write(r.page(1), 'P');
  EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(1, 2)});
  ASSERT_EQ(::madvise(r.page(1), kPageSize, MADV_DONTNEED), 0);
  EXPECT_EQ(Read(r.page(1)), 'i');
  EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{});
  Write(r.page(1) + 1, 'Q');
  EXPECT_EQ(CollectOrDie(tracker(), r), Ranges{r.pages(1, 2)});
}

SPARE_INSTANTIATE_TRACKER_TESTS(TrackerTest);

TEST(UffdTracker, LazyModeRefusesSharedMappings) {
  if (!UffdTrackerSupported()) GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
  // A write to a MAP_SHARED page creates no anonymous page, so the lazy
  // scan could not see it: Add() must refuse rather than lose writes.
  auto t = internal::NewUffdTracker(internal::UffdMode::kLazy);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  auto fd = CreateMemfd("shared", 4 * kPageSize);
  ASSERT_TRUE(fd.ok());
  auto p = MapShared(fd->get(), 4 * kPageSize, /*writable=*/true);
  ASSERT_TRUE(p.ok());
  Status st = (*t)->Add(*p, 4 * kPageSize);
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("MAP_PRIVATE"), std::string::npos) << st.ToString();
  ::munmap(*p, 4 * kPageSize);
}

// Lazy mode seals each 2 MiB chunk it finds in use; reads (page-cache
// pages and never-touched entries) must never be reported as writes,
// before or after sealing, and writes never missed.
TEST(UffdTracker, SealedChunksReportExactlyTheWrittenPages) {
  if (!UffdTrackerSupported()) GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
  constexpr size_t kChunkPages = 512;  // 2 MiB
  auto t = internal::NewUffdTracker(internal::UffdMode::kLazy);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  DirtyTracker& tracker = **t;
  auto r = TestRegion::MemfdPrivate(4 * kChunkPages);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->addr(0) % (kChunkPages * kPageSize), 0u) << "test assumes 2 MiB alignment";
  ASSERT_EQ(::pwrite(r->memfd(), "image", 5, 3 * kPageSize), 5);

  Write(r->page(1));  // before Add: counts as clean, and seals chunk 0
  ASSERT_TRUE(tracker.Add(r->base(), r->len()).ok());
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 1u);

  // Chunk 0: sealed. Chunk 1: reads only. Chunk 2: a write and reads.
  // Chunk 3: untouched.
  EXPECT_EQ(Read(r->page(3)), 'i');
  Write(r->page(5));
  (void)Read(r->page(kChunkPages + 7));
  (void)Read(r->page(kChunkPages + 300));
  Write(r->page(2 * kChunkPages + 9));
  (void)Read(r->page(2 * kChunkPages + 10));
  EXPECT_EQ(CollectOrDie(tracker, *r),
            (Ranges{r->pages(5, 6), r->pages(2 * kChunkPages + 9, 2 * kChunkPages + 10)}));
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 3u) << "chunks 0-2 in use";
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{});

  // Sealed now: reads of pages seen before, of never-touched pages (pte
  // markers), and of the image are still not writes; writes still are.
  (void)Read(r->page(kChunkPages + 7));
  (void)Read(r->page(kChunkPages + 8));
  (void)Read(r->page(2 * kChunkPages + 200));
  EXPECT_EQ(Read(r->page(3)), 'i');
  Write(r->page(kChunkPages + 300));
  Write(r->page(2 * kChunkPages + 201));
  Write(r->page(2 * kChunkPages + 202));
  Write(r->page(4));
  EXPECT_EQ(CollectOrDie(tracker, *r),
            (Ranges{r->pages(4, 5), r->pages(kChunkPages + 300, kChunkPages + 301),
                    r->pages(2 * kChunkPages + 201, 2 * kChunkPages + 203)}));
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{});

  // Dropping a clean private copy leaves the page protected.
  ASSERT_EQ(::madvise(r->page(4), kPageSize, MADV_DONTNEED), 0);
  (void)Read(r->page(4));
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{});
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 3u);
}

// A Collect() of part of a range must not seal (or touch) chunks it only
// partly covers: their other pages may hold writes it must not report.
TEST(UffdTracker, PartialCollectLeavesStraddledChunksLazy) {
  if (!UffdTrackerSupported()) GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
  constexpr size_t kChunkPages = 512;
  auto t = internal::NewUffdTracker(internal::UffdMode::kLazy);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  DirtyTracker& tracker = **t;
  auto r = TestRegion::MemfdPrivate(2 * kChunkPages);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(tracker.Add(r->base(), r->len()).ok());
  Write(r->page(10));
  Write(r->page(400));
  (void)Read(r->page(401));
  Write(r->page(kChunkPages + 1));
  std::vector<PageRange> out;
  // The first half of chunk 0 only.
  ASSERT_TRUE(tracker.Collect(r->base(), 256 * kPageSize, &out).ok());
  EXPECT_EQ(out, Ranges{r->pages(10, 11)});
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 0u);
  // The rest: page 400 still reported, page 401 (read) not.
  out.clear();
  ASSERT_TRUE(tracker.Collect(r->page(256), r->len() - 256 * kPageSize, &out).ok());
  EXPECT_EQ(out, (Ranges{r->pages(400, 401), r->pages(kChunkPages + 1, kChunkPages + 2)}));
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 1u) << "chunk 1 only";
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{});
  // Chunk 0 is sealed the next time a scan sees a new entry in it.
  Write(r->page(11));
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{r->pages(11, 12)});
  EXPECT_EQ(internal::UffdSealedChunks(tracker, r->base()), 2u);
  EXPECT_EQ(CollectOrDie(tracker, *r), Ranges{});
}

// The chunk guard (uffd_tracker.cc): chunks clean for `need` collections
// are made read-only and skipped by later scans until written.
class UffdChunkGuard : public ::testing::Test {
 protected:
  static constexpr size_t kChunkPages = 512;  // 2 MiB

  void SetUp() override {
    if (!UffdTrackerSupported()) GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
  }

  // A tracker with `policy` over a fresh region of `chunks` 2 MiB chunks,
  // every page written before Add() (resident, all chunks sealed).
  void Start(internal::ChunkGuardPolicy policy, size_t chunks) {
    auto t = internal::NewUffdTracker(internal::UffdMode::kLazy, policy);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tracker_ = std::move(*t);
    auto r = TestRegion::MemfdPrivate(chunks * kChunkPages);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    region_.emplace(std::move(*r));
    ASSERT_EQ(region_->addr(0) % (kChunkPages * kPageSize), 0u) << "test assumes 2 MiB alignment";
    for (size_t p = 0; p < chunks * kChunkPages; ++p) Write(region_->page(p));
    ASSERT_TRUE(tracker_->Add(region_->base(), region_->len()).ok());
    ASSERT_EQ(internal::UffdSealedChunks(*tracker_, region_->base()), chunks);
  }

  void TearDown() override {
    if (tracker_ && region_) {
      EXPECT_TRUE(tracker_->Remove(region_->base(), region_->len()).ok());
    }
  }

  // Collects the whole region; the stats of that collection in *stats.
  Ranges Collect(internal::CollectStats* stats) {
    Ranges out = CollectOrDie(*tracker_, *region_);
    *stats = internal::LastCollectStats(*tracker_);
    return out;
  }

  // Start() with a policy that guards a chunk after one clean collection
  // and never un-guards it, then that collection: all chunks guarded.
  void StartAllGuarded(size_t chunks) {
    Start({.enabled = true, .initial_need = 1, .max_need = 1, .break_even = 0}, chunks);
    internal::CollectStats st;
    EXPECT_EQ(Collect(&st), Ranges{});
    EXPECT_EQ(Collect(&st), Ranges{});
    ASSERT_EQ(st.chunks_guarded, chunks);
  }

  TestRegion& r() { return *region_; }
  DirtyTracker& tracker() { return *tracker_; }

 private:
  std::unique_ptr<DirtyTracker> tracker_;
  std::optional<TestRegion> region_;
};

TEST_F(UffdChunkGuard, SkipsCleanChunksAndReportsExactlyTheWrittenPages) {
  Start({.enabled = true, .initial_need = 2, .max_need = 4, .min_writes = 2, .break_even = 3}, 8);
  internal::CollectStats st;
  // Add() was collection 1 (it saw the writes). Two clean ones, then the
  // third guards all 8 chunks (read-only first, then one last scan).
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Collect(&st), Ranges{});
    EXPECT_EQ(st.chunks_scanned, 8u);
    EXPECT_EQ(st.chunks_guarded, 0u);
  }
  EXPECT_EQ(Collect(&st), Ranges{});  // collection 4
  EXPECT_EQ(st.chunks_scanned, 8u);
  EXPECT_EQ(st.chunks_guarded, 8u);
  // Guarded and clean: nothing scanned; reads do not count as writes.
  for (size_t p : {0, 700, 4095}) (void)Read(r().page(p));
  EXPECT_EQ(Collect(&st), Ranges{});  // 5
  EXPECT_EQ(st.chunks_scanned, 0u);

  // Chunk 3 written: scanned, the page reported, still guarded (one write
  // is not enough to judge).
  const size_t c3 = 3 * kChunkPages;
  Write(r().page(c3 + 5));
  EXPECT_EQ(Collect(&st), Ranges{r().pages(c3 + 5, c3 + 6)});  // 6
  EXPECT_EQ(st.chunks_scanned, 1u);
  EXPECT_EQ(st.chunks_guarded, 8u);
  // Written again: 2 writes in 3 collections (< break_even 3 apart): back
  // to the scanned set, need grows to 4 (max_need).
  Write(r().page(c3 + 300));
  EXPECT_EQ(Collect(&st), Ranges{r().pages(c3 + 300, c3 + 301)});  // 7
  EXPECT_EQ(st.chunks_scanned, 1u);
  EXPECT_EQ(st.chunks_guarded, 7u);
  Write(r().page(c3 + 6));                                     // no fault now, still seen
  EXPECT_EQ(Collect(&st), Ranges{r().pages(c3 + 6, c3 + 7)});  // 8
  EXPECT_EQ(st.chunks_scanned, 1u);
  for (int i = 0; i < 4; ++i) {  // 9-12: clean 1-4 of 4
    EXPECT_EQ(Collect(&st), Ranges{});
    EXPECT_EQ(st.chunks_scanned, 1u);
    EXPECT_EQ(st.chunks_guarded, 7u);
  }
  EXPECT_EQ(Collect(&st), Ranges{});  // 13: guarded again
  EXPECT_EQ(st.chunks_scanned, 1u);
  EXPECT_EQ(st.chunks_guarded, 8u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(Collect(&st), Ranges{});  // 14, 15
  Write(r().page(c3 + 7));
  EXPECT_EQ(Collect(&st), Ranges{r().pages(c3 + 7, c3 + 8)});     // 16
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Collect(&st), Ranges{});  // 17-20
  // 2 writes in 8 collections: stays guarded.
  Write(r().page(c3 + 8));
  EXPECT_EQ(Collect(&st), Ranges{r().pages(c3 + 8, c3 + 9)});  // 21
  EXPECT_EQ(st.chunks_scanned, 1u);
  EXPECT_EQ(st.chunks_guarded, 8u);
  EXPECT_EQ(Collect(&st), Ranges{});
  EXPECT_EQ(st.chunks_scanned, 0u);

  // Writes on both sides of a chunk boundary: one merged range.
  Write(r().page(7 * kChunkPages - 1) + 4000);
  Write(r().page(7 * kChunkPages));
  EXPECT_EQ(Collect(&st), Ranges{r().pages(7 * kChunkPages - 1, 7 * kChunkPages + 1)});
  EXPECT_EQ(st.chunks_scanned, 2u);
  EXPECT_EQ(Collect(&st), Ranges{});
}

TEST_F(UffdChunkGuard, ChunkWrittenEveryCollectionStaysScanned) {
  Start({}, 2);  // the default policy
  internal::CollectStats st;
  for (int i = 0; i < 100; ++i) {
    Write(r().page(10 + i));
    EXPECT_EQ(Collect(&st), Ranges{r().pages(10 + i, 11 + i)});
  }
  EXPECT_EQ(st.chunks_scanned, 1u) << "chunk 1 guarded, chunk 0 scanned";
  EXPECT_EQ(st.chunks_guarded, 1u);
}

TEST_F(UffdChunkGuard, CollectOfPartOfAGuardedChunk) {
  StartAllGuarded(2);
  internal::CollectStats st;
  Write(r().page(10));
  Write(r().page(400));
  Write(r().page(kChunkPages + 1));
  // The first half of chunk 0 only: chunk 0's flag also covers page 400,
  // so this collection must leave it for the next.
  std::vector<PageRange> out;
  ASSERT_TRUE(tracker().Collect(r().base(), 256 * kPageSize, &out).ok());
  EXPECT_EQ(out, Ranges{r().pages(10, 11)});
  out.clear();
  ASSERT_TRUE(tracker().Collect(r().page(256), r().len() - 256 * kPageSize, &out).ok());
  EXPECT_EQ(out, (Ranges{r().pages(400, 401), r().pages(kChunkPages + 1, kChunkPages + 2)}));
  EXPECT_EQ(Collect(&st), Ranges{});
  EXPECT_EQ(Collect(&st), Ranges{});
  EXPECT_EQ(st.chunks_scanned, 0u);
  EXPECT_EQ(st.chunks_guarded, 2u);
}

// The guard's price (tracker.h): the kernel does not fault into the
// handler, so a system call writing into a guarded chunk fails. Without
// the guard it works (TrackerTest.KernelWritesIntoTrackedMemory).
TEST_F(UffdChunkGuard, KernelWritesIntoAGuardedChunkFailWithEfault) {
  StartAllGuarded(1);
  internal::CollectStats st;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  EXPECT_EQ(::read(fds[0], r().page(2) + 100, 1), -1);
  EXPECT_EQ(errno, EFAULT);
  EXPECT_EQ(Collect(&st), Ranges{});
  Write(r().page(2) + 99);  // a user-mode write un-guards the chunk
  EXPECT_EQ(::read(fds[0], r().page(2) + 100, 1), 1);
  EXPECT_EQ(Read(r().page(2) + 100), 'x');
  EXPECT_EQ(Collect(&st), Ranges{r().pages(2, 3)});
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_F(UffdChunkGuard, OffScansEveryChunk) {
  Start({.enabled = false}, 4);
  internal::CollectStats st;
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(Collect(&st), Ranges{});
    EXPECT_EQ(st.chunks_scanned, 4u);
    EXPECT_EQ(st.chunks_guarded, 0u);
  }
}

TEST(UffdChunkGuardPolicy, FromEnv) {
  ::setenv("SPARE_UFFD_GUARD", "off", 1);
  auto off = internal::ChunkGuardPolicyFromEnv();
  ::setenv("SPARE_UFFD_GUARD", "maybe", 1);
  auto bad = internal::ChunkGuardPolicyFromEnv();
  ::unsetenv("SPARE_UFFD_GUARD");
  auto dflt = internal::ChunkGuardPolicyFromEnv();
  ASSERT_TRUE(off.ok() && dflt.ok());
  EXPECT_FALSE(off->enabled);
  EXPECT_TRUE(dflt->enabled);
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("maybe"), std::string::npos);
}

// The mprotect tracker reads one summary word per 4096 pages and only the
// bitmap words they mark, not one word per 64 pages.
TEST(MprotectTracker, CollectReadsTheSummaryNotTheWholeBitmap) {
  constexpr size_t kPages = size_t{1} << 18;  // 1 GiB, never made resident
  auto t = internal::NewMprotectTracker();
  ASSERT_TRUE(t.ok());
  auto r = TestRegion::MemfdPrivate(kPages);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE((*t)->Add(r->base(), r->len()).ok());
  EXPECT_EQ(CollectOrDie(**t, *r), Ranges{});
  EXPECT_EQ(internal::LastCollectStats(**t).flag_words, kPages / 4096);
  Write(r->page(100000));
  Write(r->page(200001));
  EXPECT_EQ(CollectOrDie(**t, *r), (Ranges{r->pages(100000, 100001), r->pages(200001, 200002)}));
  EXPECT_EQ(internal::LastCollectStats(**t).flag_words, kPages / 4096 + 2);
  EXPECT_EQ(CollectOrDie(**t, *r), Ranges{});
  ASSERT_TRUE((*t)->Remove(r->base(), r->len()).ok());
}

TEST(UffdTracker, ProbeChoseLazyMode) {
  if (!UffdTrackerSupported()) GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
  EXPECT_EQ(internal::UffdProbe().mode, internal::UffdMode::kLazy);
}

// The SIGSEGV handler is process-wide and installed on first use, so these
// run in a freshly exec'd child ("threadsafe" death tests).
void FaultOutsideTrackedRange() {
  auto t = DirtyTracker::Create(TrackerKind::kMprotect);
  auto r = TestRegion::MemfdPrivate(4);
  if (!t.ok() || !r.ok() || !(*t)->Add(r->base(), r->len()).ok()) _exit(3);
  Write(r->page(1));  // tracked: handled, no crash
  std::vector<PageRange> out;
  if (!(*t)->Collect(r->base(), r->len(), &out).ok() || out.size() != 1) _exit(4);
  void* guard = ::mmap(nullptr, kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  Write(static_cast<char*>(guard));  // not tracked: goes to the previous handler
  _exit(0);
}

TEST(MprotectTrackerDeathTest, ChainsForeignFaultsToThePreviousHandler) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        struct sigaction sa = {};
        sa.sa_handler = [](int) { _exit(42); };
        ::sigaction(SIGSEGV, &sa, nullptr);
        FaultOutsideTrackedRange();
      },
      ::testing::ExitedWithCode(42), "");
}

TEST(MprotectTrackerDeathTest, ForeignFaultWithDefaultActionStillKills) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::signal(SIGSEGV, SIG_DFL);  // e.g. drop a sanitizer's handler
        FaultOutsideTrackedRange();
      },
      ::testing::KilledBySignal(SIGSEGV), "");
}

}  // namespace
}  // namespace spare::region::testing
