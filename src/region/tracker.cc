// Tracker selection and the bookkeeping both implementations share.
#include "region/tracker.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "region/mapping.h"
#include "region/tracker_internal.h"

namespace spare::region {

Result<TrackerKind> TrackerKindFromEnv() {
  const char* v = std::getenv("SPARE_TRACKER");
  if (v == nullptr || *v == '\0') return TrackerKind::kAuto;
  const std::string_view s(v);
  if (s == "auto") return TrackerKind::kAuto;
  if (s == "uffd") return TrackerKind::kUffd;
  if (s == "mprotect") return TrackerKind::kMprotect;
  return Status(Code::kInvalidArgument,
                "SPARE_TRACKER=\"" + std::string(s) + "\": expected uffd, mprotect or auto");
}

bool UffdTrackerSupported() { return internal::UffdProbe().status.ok(); }

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::Create(TrackerKind kind) {
  switch (kind) {
    case TrackerKind::kAuto:
      if (UffdTrackerSupported()) return internal::NewUffdTracker();
      return internal::NewMprotectTracker();
    case TrackerKind::kUffd: {
      const Status& probe = internal::UffdProbe().status;
      if (!probe.ok()) {
        return Status(Code::kUnsupported,
                      "dirty tracker uffd-wp (SPARE_TRACKER=uffd) needs Linux >= 6.7 with "
                      "userfaultfd async write-protect and PAGEMAP_SCAN; use "
                      "SPARE_TRACKER=mprotect or auto: " +
                          probe.message());
      }
      return internal::NewUffdTracker();
    }
    case TrackerKind::kMprotect:
      return internal::NewMprotectTracker();
  }
  return Status(Code::kInvalidArgument, "unknown TrackerKind");
}

namespace internal {

Result<ChunkGuardPolicy> ChunkGuardPolicyFromEnv() {
  ChunkGuardPolicy policy;
  const char* v = std::getenv("SPARE_UFFD_GUARD");
  if (v == nullptr || *v == '\0') return policy;
  const std::string_view s(v);
  if (s != "on" && s != "off") {
    return Status(Code::kInvalidArgument,
                  "SPARE_UFFD_GUARD=\"" + std::string(s) + "\": expected on or off");
  }
  policy.enabled = s == "on";
  return policy;
}

CollectStats LastCollectStats(const DirtyTracker& tracker) {
  return tracker.name() == "mprotect" ? MprotectLastCollect(tracker) : UffdLastCollect(tracker);
}

std::string DescribeRange(uintptr_t start, uintptr_t end) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "[0x%" PRIxPTR ", 0x%" PRIxPTR ")", start, end);
  return buf;
}

void AppendMerged(std::vector<PageRange>* out, size_t first, uintptr_t start, uintptr_t end) {
  if (out->size() > first && out->back().end == start) {
    out->back().end = end;
  } else {
    out->push_back(PageRange{start, end});
  }
}

Status RangeList::CheckNew(const void* base, size_t len) const {
  const auto start = reinterpret_cast<uintptr_t>(base);
  if (start % kPageSize != 0 || len % kPageSize != 0 || len == 0) {
    return Status(Code::kInvalidArgument, "tracked range " + DescribeRange(start, start + len) +
                                              " must be page aligned and non-empty");
  }
  for (const PageRange& r : ranges_) {
    if (start < r.end && r.start < start + len) {
      return Status(Code::kInvalidArgument, "tracked range " + DescribeRange(start, start + len) +
                                                " overlaps " + DescribeRange(r.start, r.end) +
                                                ", which is already tracked");
    }
  }
  return Status::Ok();
}

void RangeList::Insert(const void* base, size_t len) {
  const auto start = reinterpret_cast<uintptr_t>(base);
  ranges_.push_back(PageRange{start, start + len});
}

Result<PageRange> RangeList::FindContaining(const void* base, size_t len) const {
  const auto start = reinterpret_cast<uintptr_t>(base);
  if (start % kPageSize == 0 && len % kPageSize == 0) {
    for (const PageRange& r : ranges_) {
      if (r.start <= start && start + len <= r.end) return r;
    }
  }
  return Status(Code::kNotFound, DescribeRange(start, start + len) +
                                     " is not page aligned inside a range added to this tracker");
}

Status RangeList::Erase(const void* base, size_t len) {
  const auto start = reinterpret_cast<uintptr_t>(base);
  for (auto it = ranges_.begin(); it != ranges_.end(); ++it) {
    if (it->start == start && it->end == start + len) {
      ranges_.erase(it);
      return Status::Ok();
    }
  }
  return Status(Code::kNotFound,
                DescribeRange(start, start + len) + " was not added to this tracker");
}

}  // namespace internal
}  // namespace spare::region
