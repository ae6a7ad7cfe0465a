// region/write_log.h — where declared writes go (spare/declare.h).
//
// One WriteLog per region mapped with WriteTracking::kDeclared, owned by
// the runtime and registered here while the region is mapped, so that
// spare::DeclareWrite(p, n) — called by the arena and the program with a
// bare address — finds the region that holds p. commit() takes the log.
//
// Not thread-safe, like the Runtime: registration, declaring and taking
// happen on the thread that commits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace spare::region {

struct ByteRange {  // [offset, offset + length) of one region
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t end() const { return offset + length; }
  bool operator==(const ByteRange&) const = default;
};

struct WriteLog {
  uintptr_t start = 0;  // the region's bytes [start, end)
  uintptr_t end = 0;
  std::vector<ByteRange> ranges;  // in declaration order; may overlap
  uint64_t calls = 0;             // DeclareWrite calls that hit this region
  uint64_t bytes = 0;             // bytes they named (before merging)

  void Add(uint64_t offset, uint64_t length) {
    ++calls;
    bytes += length;
    if (!ranges.empty()) {
      ByteRange& last = ranges.back();
      // The common repeats: the same field again, or the next bytes.
      if (offset >= last.offset && offset <= last.end()) {
        if (offset + length > last.end()) last.length = offset + length - last.offset;
        return;
      }
    }
    ranges.push_back({offset, length});
  }
};

// REQUIRES: log->[start, end) overlaps no registered log. At most
// kMaxWriteLogs at once; false when full.
inline constexpr size_t kMaxWriteLogs = 64;
bool RegisterWriteLog(WriteLog* log);
void UnregisterWriteLog(WriteLog* log);

// Sorts and merges overlapping or adjacent ranges in place.
void NormalizeRanges(std::vector<ByteRange>* ranges);

}  // namespace spare::region
