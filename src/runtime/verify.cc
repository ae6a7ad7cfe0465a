// $SPARE_VERIFY_WRITES: checking that a declared region's program declared
// every byte it wrote (spare/runtime.h, WriteTracking::kDeclared).
//
// A verified region is page-tracked as well, and keeps a shadow: an
// anonymous mapping holding the region's contents as of the previous
// collection. At each collection every page the tracker reports is compared
// with its shadow outside the ranges declared since then; a difference is a
// write the epoch would not carry, so commit() fails with
// kUndeclaredWrite naming the offset. Then the page goes into the shadow.
// The shadow starts as the region's contents at mapping time: zero for a
// new region, the committed image on resume (copied from the memfd's data
// extents only, so holes cost nothing). Test mode: it doubles the memory of
// the pages written and copies every dirty page once more per commit.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "region/mapping.h"
#include "runtime/runtime_impl.h"

namespace spare {

Status RuntimeImpl::StartShadow(RegionState& rs) {
  const size_t size = rs.region->size();
  void* shadow = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (shadow == MAP_FAILED)
    return Status::FromErrno("SPARE_VERIFY_WRITES: mapping the shadow of region " +
                                 rs.region->name(),
                             errno);
  rs.shadow = shadow;
  if (!rs.memfd.valid()) return Status::Ok();  // unprotected: starts zero, as the region
  auto* dst = static_cast<std::byte*>(shadow);
  const int fd = rs.memfd.get();
  off_t at = 0;
  while (static_cast<size_t>(at) < size) {
    const off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only holes from here
      return Status::FromErrno("SPARE_VERIFY_WRITES: lseek(SEEK_DATA) on region " +
                                   rs.region->name(),
                               errno);
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || static_cast<size_t>(hole) > size) hole = static_cast<off_t>(size);
    std::memcpy(dst + data, rs.region->bytes() + data, static_cast<size_t>(hole - data));
    at = hole;
  }
  return Status::Ok();
}

Status RuntimeImpl::VerifyDeclared(uint32_t index, std::span<const region::PageRange> dirty) {
  RegionState& rs = regions_[index];
  const Region& r = *rs.region;
  region::NormalizeRanges(&rs.log->ranges);
  const std::vector<region::ByteRange>& declared = rs.log->ranges;
  const auto base = reinterpret_cast<uintptr_t>(r.data());
  auto* shadow = static_cast<std::byte*>(rs.shadow);
  size_t d = 0;  // first declared range that may overlap what is checked next
  // Bytes [lo, hi) must equal the shadow.
  auto same = [&](uint64_t lo, uint64_t hi) -> Status {
    if (lo >= hi || std::memcmp(r.bytes() + lo, shadow + lo, hi - lo) == 0) return Status::Ok();
    uint64_t at = lo;
    while (r.bytes()[at] == shadow[at]) ++at;
    char what[160];
    std::snprintf(what, sizeof what,
                  "region %s: byte at offset 0x%" PRIx64 " (address 0x%" PRIxPTR
                  ") changed from 0x%02x to 0x%02x since the last commit",
                  r.name().c_str(), at, base + at, static_cast<unsigned>(shadow[at]),
                  static_cast<unsigned>(r.bytes()[at]));
    return Status(Code::kUndeclaredWrite,
                  std::string(what) +
                      " but was not declared; the epoch would not carry it "
                      "(SPARE_VERIFY_WRITES=1). Declare it with Region::declare or "
                      "spare::DeclareWrite before commit()");
  };
  for (const region::PageRange& p : dirty) {
    uint64_t at = p.start - base;
    const uint64_t end = p.end - base;
    while (d < declared.size() && declared[d].end() <= at) ++d;
    for (size_t k = d; at < end && k < declared.size() && declared[k].offset < end; ++k) {
      SPARE_RETURN_IF_ERROR(same(at, declared[k].offset));
      at = std::max(at, declared[k].end());
    }
    SPARE_RETURN_IF_ERROR(same(at, end));
    stats_.pages_verified += p.bytes() / region::kPageSize;
    std::memcpy(shadow + (p.start - base), r.bytes() + (p.start - base), p.bytes());
  }
  return Status::Ok();
}

}  // namespace spare
