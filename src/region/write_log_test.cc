#include "region/write_log.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "spare/declare.h"

namespace spare::region {
namespace {

TEST(WriteLog, MergesRepeatsAndExtensionsOnTheSpot) {
  WriteLog log;
  log.Add(100, 8);
  log.Add(100, 8);   // same field again
  log.Add(108, 16);  // the next bytes
  log.Add(104, 4);   // inside
  log.Add(300, 4);
  EXPECT_EQ(log.ranges, (std::vector<ByteRange>{{100, 24}, {300, 4}}));
  EXPECT_EQ(log.calls, 5u);
  EXPECT_EQ(log.bytes, 40u);
}

TEST(WriteLog, NormalizeSortsAndMergesOverlapsAndNeighbours) {
  std::vector<ByteRange> v{{500, 10}, {0, 4}, {4, 4}, {502, 20}, {100, 1}, {99, 1}};
  NormalizeRanges(&v);
  EXPECT_EQ(v, (std::vector<ByteRange>{{0, 8}, {99, 2}, {500, 22}}));
}

TEST(DeclareWrite, FindsTheRegionAndClipsToIt) {
  alignas(64) static unsigned char a[4096], b[4096];
  WriteLog la{reinterpret_cast<uintptr_t>(a), reinterpret_cast<uintptr_t>(a) + sizeof a};
  WriteLog lb{reinterpret_cast<uintptr_t>(b), reinterpret_cast<uintptr_t>(b) + sizeof b};
  ASSERT_TRUE(RegisterWriteLog(&la));
  ASSERT_TRUE(RegisterWriteLog(&lb));
  uint64_t x = 0;
  DeclareWrite(&x, sizeof x);  // in no region: ignored
  DeclareWrite(a + 10, 6);
  DeclareWrite(b[4000]);
  DeclareWrite(a + 4090, 100);  // runs past a's end: clipped
  DeclareWrite(a + 20, 0);      // empty: ignored
  UnregisterWriteLog(&la);
  DeclareWrite(a + 30, 1);  // a no longer declared: ignored
  UnregisterWriteLog(&lb);
  EXPECT_EQ(la.ranges, (std::vector<ByteRange>{{10, 6}, {4090, 6}}));
  EXPECT_EQ(lb.ranges, (std::vector<ByteRange>{{4000, 1}}));
}

TEST(DeclareWrite, RegistryIsBounded) {
  std::vector<WriteLog> logs(kMaxWriteLogs + 1);
  size_t registered = 0;
  for (size_t i = 0; i < logs.size(); ++i) {
    logs[i].start = 0x1000 * (i + 1);
    logs[i].end = logs[i].start + 0x1000;
    registered += RegisterWriteLog(&logs[i]);
  }
  EXPECT_EQ(registered, kMaxWriteLogs);
  for (auto& l : logs) UnregisterWriteLog(&l);
}

}  // namespace
}  // namespace spare::region
