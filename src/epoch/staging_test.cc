#include "epoch/staging.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/fd.h"
#include "epoch/data_hash.h"

namespace spare::epoch {
namespace {

constexpr uint64_t kGen = 3;  // the generation every test slot is filled by

constexpr uint64_t kPage = 4096;

// A staging area in plain memory plus regions as memfds.
struct Fixture {
  std::vector<std::byte> area;
  StagingView view;
  std::vector<UniqueFd> fds;
  std::vector<RegionTarget> targets;
  std::vector<std::vector<std::byte>> live;  // the instance's view of each region

  Fixture(uint32_t slots, uint64_t slot_size, std::vector<uint64_t> region_sizes) {
    area.resize(StagingBytes(slots, slot_size));
    view = StagingView{area.data(), area.size(), slots, slot_size};
    InitStaging(view);
    for (uint64_t s : region_sizes) {
      int fd = memfd_create("test", MFD_CLOEXEC);
      EXPECT_EQ(ftruncate(fd, static_cast<off_t>(s)), 0);
      fds.emplace_back(fd);
      targets.push_back({fd, s});
      live.emplace_back(s, std::byte{0});
    }
  }
  void Write(uint32_t region, uint64_t page, char c) {
    std::memset(live[region].data() + page * kPage, c, kPage);
  }
  DirtyRun Run(uint32_t region, uint64_t page, uint64_t pages) {
    return {region, live[region].data() + page * kPage, page * kPage, pages * kPage};
  }
  char Image(uint32_t region, uint64_t page) {
    char c = 0;
    EXPECT_EQ(pread(fds[region].get(), &c, 1, static_cast<off_t>(page * kPage)), 1);
    return c;
  }
};

std::span<const std::byte> Rec(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(Staging, OpenChecksHeader) {
  Fixture f(4, kMinSlotSize, {});
  EXPECT_TRUE(OpenStaging(f.area.data(), f.area.size()).ok());
  EXPECT_FALSE(OpenStaging(f.area.data(), 100).ok());
  f.area[0] = std::byte{0};
  auto r = OpenStaging(f.area.data(), f.area.size());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("magic"), std::string::npos);
}

TEST(Staging, FillThenApplyWritesExactlyTheRuns) {
  Fixture f(4, 1 << 20, {64 * kPage, 16 * kPage});
  f.Write(0, 3, 'a');
  f.Write(0, 4, 'b');
  f.Write(1, 15, 'c');
  std::vector<DirtyRun> runs = {f.Run(0, 3, 2), f.Run(1, 15, 1)};
  EpochPlan plan = PlanEpoch(f.view, runs, 5);
  ASSERT_EQ(plan.parts, 1u);
  FillEpoch(f.view, kGen, 1, 0, plan, runs, Rec("rec-1"));
  std::string record;
  uint64_t bytes = 0;
  ASSERT_TRUE(ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, &record, &bytes).ok());
  EXPECT_EQ(record, "rec-1");
  EXPECT_EQ(bytes, 3 * kPage);
  EXPECT_EQ(f.Image(0, 3), 'a');
  EXPECT_EQ(f.Image(0, 4), 'b');
  EXPECT_EQ(f.Image(0, 5), 0);
  EXPECT_EQ(f.Image(1, 15), 'c');
  // Idempotent: applying again gives the same image.
  ASSERT_TRUE(ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, &record).ok());
  EXPECT_EQ(f.Image(0, 3), 'a');
}

TEST(Staging, LargeEpochSpansPartsAndWraps) {
  const uint64_t slot = kMinSlotSize;  // 32 pages, minus headers
  Fixture f(4, slot, {256 * kPage});
  for (uint64_t p = 0; p < 70; ++p) f.Write(0, p, static_cast<char>('A' + p % 26));
  std::vector<DirtyRun> runs = {f.Run(0, 0, 70)};
  EpochPlan plan = PlanEpoch(f.view, runs, 0);
  ASSERT_EQ(plan.parts, 3u);                      // 70 pages at < 32 per slot
  FillEpoch(f.view, kGen, 9, 2, plan, runs, {});  // slots 2, 3, 0
  ASSERT_TRUE(ApplyEpoch(f.view, kGen, 9, 2, 3, f.targets, nullptr).ok());
  for (uint64_t p = 0; p < 70; ++p) EXPECT_EQ(f.Image(0, p), static_cast<char>('A' + p % 26));
  // Naming too few parts is a torn epoch, and nothing is written.
  auto v = ValidateEpoch(f.view, kGen, 9, 2, 2, f.targets);
  EXPECT_EQ(v.status().code(), Code::kTornEpoch);
}

TEST(Staging, RefusesWrongEpochWithoutWriting) {
  Fixture f(2, kMinSlotSize, {8 * kPage});
  f.Write(0, 1, 'z');
  std::vector<DirtyRun> runs = {f.Run(0, 1, 1)};
  FillEpoch(f.view, kGen, 5, 0, PlanEpoch(f.view, runs, 0), runs, {});
  Status st = ApplyEpoch(f.view, kGen, 6, 0, 1, f.targets, nullptr);
  EXPECT_EQ(st.code(), Code::kTornEpoch);
  EXPECT_NE(st.message().find("holds epoch 5"), std::string::npos);
  EXPECT_EQ(f.Image(0, 1), 0);
}

TEST(Staging, RefusesOutOfBoundsEntryWithoutWriting) {
  Fixture f(2, kMinSlotSize, {8 * kPage, 8 * kPage});
  f.Write(0, 0, 'x');
  f.Write(1, 7, 'y');
  // Region 1's run is planned against a bigger fake region: page 7 + 2 pages.
  std::vector<std::byte> fake(16 * kPage);
  std::vector<DirtyRun> runs = {f.Run(0, 0, 1), {1, fake.data(), 7 * kPage, 2 * kPage}};
  FillEpoch(f.view, kGen, 1, 0, PlanEpoch(f.view, runs, 0), runs, {});
  Status st = ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, nullptr);
  EXPECT_EQ(st.code(), Code::kOutOfBounds);
  EXPECT_NE(st.message().find("region 1"), std::string::npos) << st.message();
  EXPECT_EQ(f.Image(0, 0), 0);  // the valid first entry was not applied either
}

TEST(Staging, RefusesUnknownRegion) {
  Fixture f(2, kMinSlotSize, {8 * kPage});
  std::vector<std::byte> fake(kPage);
  std::vector<DirtyRun> runs = {{3, fake.data(), 0, kPage}};
  FillEpoch(f.view, kGen, 1, 0, PlanEpoch(f.view, runs, 0), runs, {});
  EXPECT_EQ(ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, nullptr).code(), Code::kOutOfBounds);
}

TEST(Staging, RefusesTamperedTable) {
  Fixture f(2, kMinSlotSize, {8 * kPage});
  f.Write(0, 2, 'q');
  std::vector<DirtyRun> runs = {f.Run(0, 2, 1)};
  FillEpoch(f.view, kGen, 1, 0, PlanEpoch(f.view, runs, 0), runs, {});
  // Redirect the entry to page 0 without fixing the hash.
  auto* e = reinterpret_cast<SlotEntry*>(f.view.slot(0) + sizeof(SlotHeader));
  e->offset = 0;
  Status st = ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, nullptr);
  EXPECT_EQ(st.code(), Code::kTornEpoch);
  EXPECT_NE(st.message().find("checksum"), std::string::npos);
  EXPECT_EQ(f.Image(0, 0), 0);
  EXPECT_EQ(f.Image(0, 2), 0);
}

// Issue 6 item 4: the slot names its generation and hashes its data.
TEST(Staging, RefusesAnotherGenerationAndCorruptDataWithoutWriting) {
  Fixture f(2, 1 << 20, {64 * kPage});
  for (uint64_t p = 0; p < 20; ++p) f.Write(0, p, static_cast<char>('a' + p));
  std::vector<DirtyRun> runs = {f.Run(0, 0, 20)};  // 80 KiB: two hash leaves
  FillEpoch(f.view, kGen, 1, 0, PlanEpoch(f.view, runs, 0), runs, {});
  Status st = ApplyEpoch(f.view, kGen + 1, 1, 0, 1, f.targets, nullptr);
  EXPECT_EQ(st.code(), Code::kStaleGeneration) << st.ToString();
  EXPECT_NE(st.message().find("generation 3"), std::string::npos) << st.ToString();
  EXPECT_EQ(f.Image(0, 0), 0);
  // One flipped byte in the second leaf: the table still checks, the data does not.
  auto* h = reinterpret_cast<SlotHeader*>(f.view.slot(0));
  f.view.slot(0)[h->used - 1] ^= std::byte{0x40};
  st = ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, nullptr);
  EXPECT_EQ(st.code(), Code::kChecksumMismatch) << st.ToString();
  EXPECT_EQ(f.Image(0, 0), 0);
  f.view.slot(0)[h->used - 1] ^= std::byte{0x40};
  ASSERT_TRUE(ApplyEpoch(f.view, kGen, 1, 0, 1, f.targets, nullptr).ok());
  EXPECT_EQ(f.Image(0, 19), 'a' + 19);
}

// The data hash is exactly what docs/WIRE.md says: XXH3 of the XXH3 leaf
// hashes of each entry's 64 KiB leaves (so another implementation, e.g. a
// standby, can check it).
TEST(Staging, DataHashFollowsTheWireDefinition) {
  Fixture f(2, 1 << 20, {64 * kPage});
  for (uint64_t p = 0; p < 64; ++p) f.Write(0, p, static_cast<char>(p * 7 + 1));
  std::vector<DirtyRun> runs = {f.Run(0, 1, 17), f.Run(0, 40, 3)};
  FillEpoch(f.view, kGen, 1, 0, PlanEpoch(f.view, runs, 0), runs, {});
  std::vector<uint64_t> leaves;
  for (const DirtyRun& r : runs)
    for (uint64_t off = 0; off < r.length; off += kHashLeaf)
      leaves.push_back(XXH3_64bits(r.src + off, std::min<uint64_t>(kHashLeaf, r.length - off)));
  EXPECT_EQ(leaves.size(), 3u);  // 68 KiB = 64 + 4, and 12 KiB
  const auto* h = reinterpret_cast<const SlotHeader*>(f.view.slot(0));
  EXPECT_EQ(h->data_hash, XXH3_64bits(leaves.data(), leaves.size() * sizeof(uint64_t)));
  EXPECT_EQ(h->generation, kGen);
  EXPECT_EQ(Hash64("abc", 3), XXH3_64bits("abc", 3));
}

TEST(Staging, RefusesSlotsOutsideRing) {
  Fixture f(2, kMinSlotSize, {8 * kPage});
  EXPECT_EQ(ApplyEpoch(f.view, kGen, 1, 2, 1, f.targets, nullptr).code(), Code::kTornEpoch);
  EXPECT_EQ(ApplyEpoch(f.view, kGen, 1, 0, 3, f.targets, nullptr).code(), Code::kTornEpoch);
  EXPECT_EQ(ApplyEpoch(f.view, kGen, 1, 0, 0, f.targets, nullptr).code(), Code::kTornEpoch);
}

TEST(Staging, EmptyEpochCarriesRecord) {
  Fixture f(2, kMinSlotSize, {8 * kPage});
  EpochPlan plan = PlanEpoch(f.view, {}, 3);
  EXPECT_EQ(plan.parts, 1u);
  FillEpoch(f.view, kGen, 4, 1, plan, {}, Rec("abc"));
  std::string record;
  ASSERT_TRUE(ApplyEpoch(f.view, kGen, 4, 1, 1, f.targets, &record).ok());
  EXPECT_EQ(record, "abc");
}

}  // namespace
}  // namespace spare::epoch
