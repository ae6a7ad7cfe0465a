// region/tracker.h — dirty-page tracking for regions.
//
// A DirtyTracker reports which pages of a tracked range were written since
// the previous Collect() and, in the same step, write-protects them again,
// so a write that races with Collect() lands either in this collection or
// in the next one — never in neither (no lost page).
//
// Two implementations with the same semantics:
//   kUffd      userfaultfd write-protect (UFFD_FEATURE_WP_ASYNC |
//              UFFD_FEATURE_WP_UNPOPULATED) + PAGEMAP_SCAN with
//              PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC (Linux >= 6.7).
//   kMprotect  PROT_READ + a SIGSEGV handler that records the page in a
//              bitmap and re-enables writing; Collect() swaps the bitmap
//              and re-protects. Works on any kernel. Chains to the previous
//              SIGSEGV handler for faults outside tracked ranges.
// Chosen by $SPARE_TRACKER = uffd | mprotect | auto (default auto: uffd if
// the kernel supports it, else mprotect).
//
// Threading: Add/Remove/Collect from one thread (the commit thread). Other
// threads of the process may write tracked memory at any time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace spare::region {

// [start, end) in bytes, page aligned, absolute addresses.
struct PageRange {
  uintptr_t start = 0;
  uintptr_t end = 0;
  size_t bytes() const { return end - start; }
  bool operator==(const PageRange&) const = default;
};

enum class TrackerKind { kAuto, kUffd, kMprotect };

// Parses $SPARE_TRACKER; kInvalidArgument names the bad value.
Result<TrackerKind> TrackerKindFromEnv();
// True when this kernel supports the uffd tracker.
bool UffdTrackerSupported();

class DirtyTracker {
 public:
  virtual ~DirtyTracker() = default;

  // kAuto resolves as described above. kUnsupported if kUffd is asked for
  // on a kernel without it.
  static Result<std::unique_ptr<DirtyTracker>> Create(TrackerKind kind);

  // Starts tracking [base, base+len) (page aligned, already mapped). Every
  // page counts as clean from now on.
  virtual Status Add(void* base, size_t len) = 0;
  // Stops tracking a range previously added (before unmapping it).
  virtual Status Remove(void* base, size_t len) = 0;
  // Appends to *out the pages of [base, base+len) written since the last
  // Collect/Add, merged into maximal ranges in ascending order, and
  // write-protects them again atomically with respect to concurrent writers.
  virtual Status Collect(void* base, size_t len, std::vector<PageRange>* out) = 0;

  virtual std::string_view name() const = 0;  // "uffd-wp" or "mprotect"
};

}  // namespace spare::region
