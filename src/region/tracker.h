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
//              Add() is O(1) in the region size; Collect() costs
//              O(2 MiB chunks written recently): chunks that stayed clean
//              are made read-only as a whole ("chunk guard") and skipped
//              until a write faults on them, the others are scanned.
//              With $SPARE_UFFD_GUARD=off: no signals, no handler, the
//              kernel resolves its own writes (read(2) into a region
//              works), and Collect() costs O(page tables in use).
//   kMprotect  PROT_READ + a SIGSEGV handler that records the page in a
//              bitmap and re-enables writing; Collect() swaps the bitmap
//              and re-protects. Works on any kernel. Chains to the previous
//              SIGSEGV handler for faults outside tracked ranges.
// Chosen by $SPARE_TRACKER = uffd | mprotect | auto (default auto: uffd if
// the kernel supports it, else mprotect).
//
// Threading: Add/Remove/Collect from one thread (the commit thread). Other
// threads of the process may write tracked memory at any time.
//
// Caveats of kMprotect, and of kUffd with the chunk guard (the default):
//   - The kernel does not raise SIGSEGV for its own accesses: a system call
//     that writes into a clean tracked page (read(2), recv(2), ...) fails
//     with EFAULT. Receive into untracked buffers and copy. (kUffd: only in
//     chunks clean for a while, so such a failure depends on the workload;
//     set SPARE_UFFD_GUARD=off if the program must read(2) into a region.)
//   - The SIGSEGV handler is process-wide and installed on first Add(). A
//     handler installed later (crash reporters, language runtimes) must
//     chain to it; threads must not block SIGSEGV; nothing else may change
//     the protection of tracked pages.
//   - Every dirty run (kUffd: every written 64 KiB unit of a guarded chunk,
//     and every guarded chunk) splits a mapping into up to three, bounded
//     by vm.max_map_count (65530 by default): kMprotect allows ~32k
//     separate dirty runs between two collections, kUffd guards at most
//     max_map_count / 8 chunks. Past the limit the handler makes the whole
//     range writable and every page (kMprotect) or chunk (kUffd) counts as
//     written once, instead of crashing.
//   - A first write into a protected page (kUffd: 64 KiB unit) costs
//     ~10-15 us (signal + mprotect) instead of ~1-5 us.
// fork(): neither tracker serves the child. Userfaultfd registration is not
// inherited (without UFFD_FEATURE_EVENT_FORK the child's copies are
// untracked) and the tracker's /proc/self/pagemap fd keeps scanning the
// parent; the mprotect protections are inherited but the child's tracker is
// a copy. Nothing is inherited across exec. Create a new tracker in the child.
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
  // page counts as clean from now on; writes racing with Add() itself may or
  // may not be reported.
  // REQUIRES: a private read-write mapping (MAP_PRIVATE of a memfd, or
  // anonymous) that overlaps no range already tracked. kUffd refuses
  // MAP_SHARED (kInvalidArgument): its writes could not be seen.
  virtual Status Add(void* base, size_t len) = 0;
  // Stops tracking a range previously added (before unmapping it); the range
  // is writable afterwards. kNotFound unless it matches an Add() exactly.
  // REQUIRES: no other thread writes the range while Remove() runs.
  virtual Status Remove(void* base, size_t len) = 0;
  // Appends to *out the pages of [base, base+len) written since the last
  // Collect/Add, merged into maximal ranges in ascending order, and
  // write-protects them again atomically with respect to concurrent writers.
  // [base, base+len) may be any page-aligned part of one added range
  // (kNotFound otherwise). Entries already in *out are left alone.
  //
  // The caller must copy the reported pages after Collect() returns: a write
  // that races with Collect() may land in a reported page just before it is
  // re-protected, and is then included only because the copy comes later.
  // If Collect() fails, the range's dirty state is unknown (pages may have
  // been re-protected without being reported): treat the whole range as
  // dirty.
  virtual Status Collect(void* base, size_t len, std::vector<PageRange>* out) = 0;

  virtual std::string_view name() const = 0;  // "uffd-wp" or "mprotect"
};

}  // namespace spare::region
