#include "epoch/copy.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "common/fd.h"
#include "epoch/copy_pool.h"
#include "epoch/staging.h"

namespace spare::epoch {
namespace {

constexpr uint64_t kGen = 3;  // the generation every test slot is filled by

constexpr uint64_t kPage = 4096;

std::vector<std::byte> Random(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = std::byte(gen());
  return v;
}

// Every size from 0 to past two cache lines and a few large ones, at every
// source and destination misalignment mod 16 (and some mod 64): the copy
// is exact, and not one byte either side of the destination is touched.
TEST(StreamCopy, OddSizesAndAlignmentsAreExact) {
  const std::vector<std::byte> src = Random(70000, 1);
  std::vector<size_t> sizes;
  for (size_t n = 0; n <= 300; ++n) sizes.push_back(n);
  for (size_t n : {511, 512, 513, 4095, 4096, 4097, 65536 + 37}) sizes.push_back(n);
  std::vector<std::byte> dst(70000 + 256);
  for (size_t n : sizes) {
    for (size_t so : {0, 1, 7, 15, 16, 33}) {
      for (size_t d0 : {0, 1, 3, 8, 15, 16, 48, 63}) {
        std::fill(dst.begin(), dst.end(), std::byte{0xEE});
        // A 64-byte aligned base (with room before it), then the offset.
        auto base = reinterpret_cast<uintptr_t>(dst.data());
        std::byte* d = dst.data() + (64 - base % 64) + d0;
        StreamCopy(d, src.data() + so, n);
        StreamFence();
        ASSERT_EQ(std::memcmp(d, src.data() + so, n), 0)
            << "n " << n << " so " << so << " d " << d0;
        ASSERT_EQ(d[-1], std::byte{0xEE}) << "n " << n << " d " << d0;
        ASSERT_EQ(d[n], std::byte{0xEE}) << "n " << n << " d " << d0;
      }
    }
  }
}

// Many jobs of odd sizes (not page multiples) through a pool with helpers,
// above the parallel threshold: chunks cut jobs anywhere, bytes stay exact.
TEST(CopyPool, ParallelCopyOfOddJobsIsExact) {
  const size_t total = 6 * CopyPool::kParallelMin + 12345;
  const std::vector<std::byte> src = Random(total, 2);
  std::vector<std::byte> dst(total + 64 * 1024, std::byte{0});
  std::mt19937 gen(3);
  std::vector<CopyPool::Job> jobs;
  size_t s = 0, d = 0;
  while (s < total) {
    size_t n = std::min<size_t>(total - s, 1 + gen() % (600 * 1024));
    jobs.push_back({dst.data() + d, src.data() + s, n});
    s += n;
    d += n + gen() % 64;  // gaps and odd destination alignments
  }
  CopyPool pool(1);
  for (int round = 0; round < 5; ++round) {
    std::fill(dst.begin(), dst.end(), std::byte{0});
    pool.Copy(jobs);
    for (const auto& j : jobs) ASSERT_EQ(std::memcmp(j.dst, j.src, j.n), 0) << "round " << round;
  }
}

// The helper does take part (not only the caller): within a bounded number
// of large copies it has claimed some chunks, however busy the machine.
TEST(CopyPool, HelperTakesPart) {
  const std::vector<std::byte> src = Random(8 * CopyPool::kParallelMin, 8);
  std::vector<std::byte> dst(src.size());
  CopyPool pool(1);
  CopyPool::Job job{dst.data(), src.data(), src.size()};
  for (int i = 0; i < 500 && pool.helper_bytes() == 0; ++i) pool.Copy(std::span(&job, 1));
  EXPECT_GT(pool.helper_bytes(), 0u);
  EXPECT_EQ(pool.helper_bytes() % CopyPool::kChunk, 0u);
  EXPECT_EQ(dst, src);
}

TEST(CopyPool, SmallCopiesNeverUseHelpers) {
  const std::vector<std::byte> src = Random(CopyPool::kParallelMin - kPage, 4);
  std::vector<std::byte> dst(src.size());
  CopyPool pool(2);
  CopyPool::Job job{dst.data(), src.data(), src.size()};
  for (int i = 0; i < 20; ++i) pool.Copy(std::span(&job, 1));
  EXPECT_EQ(dst, src);
  EXPECT_EQ(pool.helper_bytes(), 0u);
}

// A forked child has no helper thread: its copies are done by the caller
// alone and destroying the pool does not wait for the missing thread.
TEST(CopyPool, ForkedChildCopiesAloneAndExits) {
  const std::vector<std::byte> src = Random(4 * CopyPool::kParallelMin, 5);
  std::vector<std::byte> dst(src.size());
  auto pool = std::make_unique<CopyPool>(1);
  CopyPool::Job job{dst.data(), src.data(), src.size()};
  pool->Copy(std::span(&job, 1));  // starts the helper
  ASSERT_EQ(dst, src);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(10);  // a hang fails the test instead of blocking it
    std::fill(dst.begin(), dst.end(), std::byte{0});
    pool->Copy(std::span(&job, 1));
    const bool ok = dst == src;
    pool.reset();
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::fill(dst.begin(), dst.end(), std::byte{0});
  pool->Copy(std::span(&job, 1));  // the parent's helper still works
  EXPECT_EQ(dst, src);
}

TEST(CopyPool, HelpersFromEnv) {
  setenv("SPARE_COPY_THREADS", "0", 1);
  EXPECT_EQ(*CopyHelpersFromEnv(), 0u);
  setenv("SPARE_COPY_THREADS", "2", 1);
  EXPECT_EQ(*CopyHelpersFromEnv(), 2u);
  for (const char* bad : {"x", "1x", "-1", "9"}) {
    setenv("SPARE_COPY_THREADS", bad, 1);
    auto r = CopyHelpersFromEnv();
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("SPARE_COPY_THREADS"), std::string::npos);
  }
  unsetenv("SPARE_COPY_THREADS");
  EXPECT_TRUE(CopyHelpersFromEnv().ok());
}

// --- FillEpoch through a pool: a multi-slot epoch in a page-aligned
// staging area, regions as memfds, the real ValidateEpoch/ApplyEpoch. ---

struct Area {
  StagingView view;
  std::vector<UniqueFd> fds;
  std::vector<RegionTarget> targets;
  Area(uint32_t slots, uint64_t slot_size, std::vector<uint64_t> region_sizes) {
    size_t bytes = StagingBytes(slots, slot_size);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    view = StagingView{static_cast<std::byte*>(p), bytes, slots, slot_size};
    InitStaging(view);
    for (uint64_t s : region_sizes) {
      int fd = memfd_create("copy-test", MFD_CLOEXEC);
      EXPECT_EQ(ftruncate(fd, static_cast<off_t>(s)), 0);
      fds.emplace_back(fd);
      targets.push_back({fd, s});
    }
  }
  ~Area() { munmap(view.base, view.size); }
  std::vector<std::byte> Image(uint32_t region) {
    std::vector<std::byte> v(targets[region].size);
    EXPECT_EQ(pread(fds[region].get(), v.data(), v.size(), 0), static_cast<ssize_t>(v.size()));
    return v;
  }
  std::vector<std::byte> Slots() { return {view.base + kSlotBase, view.base + view.size}; }
};

// Two regions, contiguous and strided runs, 10 MiB in 4 MiB slots (so the
// epoch spans 3 parts and wraps). Filled with helpers and without, the
// staging bytes are identical, ValidateEpoch accepts them, and applying
// them makes each image equal to exactly the source pages named.
TEST(CopyPool, ParallelFillMatchesSingleAndApplies) {
  const uint64_t r0 = 2048 * kPage, r1 = 1024 * kPage;
  std::vector<std::byte> live0 = Random(r0, 6), live1 = Random(r1, 7);
  std::vector<DirtyRun> runs;
  runs.push_back({0, live0.data(), 0, 1500 * kPage});  // 6 MiB contiguous
  for (uint64_t p = 1600; p < 2048; p += 2)            // strided single pages
    runs.push_back({0, live0.data() + p * kPage, p * kPage, kPage});
  runs.push_back({1, live1.data() + 10 * kPage, 10 * kPage, 800 * kPage});
  const std::string rec = "parallel-record";
  const auto record = std::as_bytes(std::span(rec.data(), rec.size()));

  std::vector<std::byte> slots_alone, slots_pooled;
  for (unsigned helpers : {0u, 1u}) {
    Area a(4, 4 << 20, {r0, r1});
    EpochPlan plan = PlanEpoch(a.view, runs, rec.size());
    ASSERT_EQ(plan.parts, 3u);
    CopyPool pool(helpers);
    FillEpoch(a.view, kGen, 7, 2, plan, runs, record, &pool);  // slots 2, 3, 0
    (helpers ? slots_pooled : slots_alone) = a.Slots();
    auto v = ValidateEpoch(a.view, kGen, 7, 2, plan.parts, a.targets);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->record, rec);
    std::string got_record;
    uint64_t bytes = 0;
    ASSERT_TRUE(ApplyEpoch(a.view, kGen, 7, 2, plan.parts, a.targets, &got_record, &bytes).ok());
    EXPECT_EQ(bytes, (1500 + 224 + 800) * kPage);
    const std::vector<std::byte> img0 = a.Image(0), img1 = a.Image(1);
    for (uint64_t p = 0; p < 2048; ++p) {
      const bool dirty = p < 1500 || (p >= 1600 && p % 2 == 0);
      const std::byte* want = dirty ? live0.data() + p * kPage : nullptr;
      if (want) {
        ASSERT_EQ(std::memcmp(img0.data() + p * kPage, want, kPage), 0) << "region 0 page " << p;
      } else {
        ASSERT_EQ(img0[p * kPage], std::byte{0})
            << "region 0 page " << p << " was not in the epoch";
      }
    }
    EXPECT_EQ(std::memcmp(img1.data() + 10 * kPage, live1.data() + 10 * kPage, 800 * kPage), 0);
    EXPECT_EQ(img1[9 * kPage], std::byte{0});
    EXPECT_EQ(img1[810 * kPage], std::byte{0});
  }
  EXPECT_TRUE(slots_alone == slots_pooled) << "helper changed the staging bytes";
}

}  // namespace
}  // namespace spare::epoch
