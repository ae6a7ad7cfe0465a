// region/tracker_internal.h — pieces shared by the DirtyTracker
// implementations. Private to src/region; others use region/tracker.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "region/tracker.h"
#include "spare/status.h"

namespace spare::region::internal {

// How the uffd tracker makes a range "clean" at Add():
//   kLazy   register only; Collect() looks only at pages that exist and are
//           neither page-cache nor zero-page (a write to a MAP_PRIVATE
//           mapping always creates a private anonymous page), and seals
//           each 2 MiB chunk it finds in use so later scans of it take the
//           kernel's fast path. Add() costs O(pages already in use), a scan
//           O(chunks in use).
//   kEager  also UFFDIO_WRITEPROTECT the whole range, installing a pte
//           marker in every page (~1.7 us per MiB at Add, and every later
//           scan walks all of them). Used only if kLazy fails its self-test.
enum class UffdMode { kLazy, kEager };

struct UffdSupport {
  Status status;  // Ok, or why the uffd tracker cannot run here
  UffdMode mode = UffdMode::kLazy;
};
// Self-tests both modes once (lazy first), then cached.
const UffdSupport& UffdProbe();

// The uffd tracker's chunk guard (uffd_tracker.cc): a sealed 2 MiB chunk
// found clean by `need` consecutive collections is made read-only as a
// whole and skipped by later scans until a write faults on it. Each write
// fault and re-protection costs about as much as `break_even` scans of the
// chunk, and guarding or un-guarding a chunk several times that: so a
// guarded chunk found written in `min_writes` or more collections, on
// average less than `break_even` collections apart, goes back to being
// scanned every time and its `need` grows 8-fold (up to `max_need`). Guarding
// costs ~50-100 us per resident chunk (mprotect rewrites 512 entries), so
// one collection guards at most `max_guard_per_collect` chunks.
// (break_even 48: measured on a loaded 2-core VM, docs/BENCHMARKS.md.)
struct ChunkGuardPolicy {
  bool enabled = true;
  uint16_t initial_need = 32;
  uint16_t max_need = 4096;
  uint16_t min_writes = 4;
  uint32_t break_even = 48;
  uint32_t max_guard_per_collect = 16;
};
// enabled unless $SPARE_UFFD_GUARD is "off" (kInvalidArgument names any
// value but on/off).
Result<ChunkGuardPolicy> ChunkGuardPolicyFromEnv();

// The probed mode and the policy from the environment; REQUIRES:
// UffdProbe().status.ok().
Result<std::unique_ptr<DirtyTracker>> NewUffdTracker();
// A given mode and policy, for tests and measurements.
Result<std::unique_ptr<DirtyTracker>> NewUffdTracker(UffdMode mode, ChunkGuardPolicy guard = {});
Result<std::unique_ptr<DirtyTracker>> NewMprotectTracker();
// How many 2 MiB chunks of the range added at `base` a uffd tracker has
// sealed (see uffd_tracker.cc); 0 for other trackers. For tests.
size_t UffdSealedChunks(const DirtyTracker& tracker, const void* base);

// What the last Collect() of a tracker looked at, for tests and
// measurements.
struct CollectStats {
  size_t chunks_scanned = 0;  // uffd: 2 MiB chunks PAGEMAP_SCAN walked
  size_t chunks_guarded = 0;  // uffd: chunks of the range guarded afterwards
  size_t flag_words = 0;      // words of write-fault flags read (write_fault.h)
};
CollectStats LastCollectStats(const DirtyTracker& tracker);
CollectStats UffdLastCollect(const DirtyTracker& tracker);      // {} for others
CollectStats MprotectLastCollect(const DirtyTracker& tracker);  // {} for others

// "[0x7f0000000000, 0x7f0000004000)"
std::string DescribeRange(uintptr_t start, uintptr_t end);

// Appends [start, end) to *out, merging with out->back() when adjacent and
// out->back() sits at or after index `first` (so ranges appended by an
// earlier call are never merged into).
void AppendMerged(std::vector<PageRange>* out, size_t first, uintptr_t start, uintptr_t end);

// The ranges one tracker has added, for argument checks. Not thread-safe
// (a tracker is driven from one thread).
class RangeList {
 public:
  // kInvalidArgument unless base and len are page aligned, len > 0, and the
  // range overlaps none already in the list.
  Status CheckNew(const void* base, size_t len) const;
  void Insert(const void* base, size_t len);
  // The added range that contains [base, base+len); kNotFound if none.
  Result<PageRange> FindContaining(const void* base, size_t len) const;
  // Removes exactly [base, base+len); kNotFound if it was not added.
  Status Erase(const void* base, size_t len);

  const std::vector<PageRange>& ranges() const { return ranges_; }

 private:
  std::vector<PageRange> ranges_;
};

}  // namespace spare::region::internal
