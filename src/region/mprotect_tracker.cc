// The mprotect dirty tracker, for kernels without async uffd-wp.
//
// Tracked pages are PROT_READ. A write faults; the process-wide SIGSEGV
// handler (write_fault.h, one unit per page) finds the tracked range, makes
// the page writable and flags it. Collect() takes the flags (X) and makes
// those pages read-only again (Y); why that order loses no write is in
// write_fault.cc. A write between X and Y does not fault (the page is still
// writable) and is not flagged any more — but the page is in this
// collection, and the caller copies reported pages after Collect() returns,
// i.e. after Y, so the copy contains that write.
//
// Collect() costs O(dirty pages + pages/4096): the flags carry one summary
// bit per 64 pages, so a clean 4 GiB range is 256 summary words, not 16384
// bitmap words.
#include <errno.h>
#include <sys/mman.h>

#include <algorithm>
#include <memory>
#include <string>

#include "region/mapping.h"
#include "region/tracker_internal.h"
#include "region/write_fault.h"

namespace spare::region::internal {
namespace {

class MprotectTracker final : public DirtyTracker {
 public:
  ~MprotectTracker() override {
    for (Tracked& t : tracked_) {
      ::mprotect(reinterpret_cast<void*>(t.range.start), t.range.bytes(), PROT_READ | PROT_WRITE);
    }
  }

  Status Add(void* base, size_t len) override {
    const auto start = reinterpret_cast<uintptr_t>(base);
    const PageRange range{start, start + len};
    const std::string what = "mprotect tracker: " + DescribeRange(range.start, range.end);
    if (start % kPageSize != 0 || len % kPageSize != 0 || len == 0) {
      return Status(Code::kInvalidArgument, what + " must be page aligned and non-empty");
    }
    SPARE_ASSIGN_OR_RETURN(std::unique_ptr<WriteFaults> faults,
                           WriteFaults::Publish(range, kPageShift, "mprotect tracker"));
    // Published before protecting: from here on every fault in the range
    // finds its slot.
    if (::mprotect(base, len, PROT_READ) != 0) {
      const int err = errno;
      ::mprotect(base, len, PROT_READ | PROT_WRITE);
      return Status::FromErrno(what + ": mprotect(PROT_READ) (range must be mapped)", err);
    }
    tracked_.push_back(Tracked{range, std::move(faults)});
    return Status::Ok();
  }

  // REQUIRES: no other thread writes the range while Remove() runs (it is
  // being torn down): a write that faulted before Remove() but is handled
  // after it would find no range and crash.
  Status Remove(void* base, size_t len) override {
    const auto start = reinterpret_cast<uintptr_t>(base);
    auto it = std::find_if(tracked_.begin(), tracked_.end(), [&](const Tracked& t) {
      return t.range == PageRange{start, start + len};
    });
    if (it == tracked_.end()) {
      return Status(Code::kNotFound,
                    DescribeRange(start, start + len) + " was not added to this tracker");
    }
    // Writable before unpublishing, so no write can fault into a missing slot.
    if (::mprotect(base, len, PROT_READ | PROT_WRITE) != 0) {
      return Status::FromErrno(
          "mprotect tracker: Remove " + DescribeRange(start, start + len) + ": mprotect(RW)",
          errno);
    }
    tracked_.erase(it);  // unpublishes
    return Status::Ok();
  }

  Status Collect(void* base, size_t len, std::vector<PageRange>* out) override;

  std::string_view name() const override { return "mprotect"; }

  CollectStats last_collect() const { return last_; }

 private:
  static constexpr unsigned kPageShift = 12;
  static_assert(kPageSize == size_t{1} << kPageShift);

  struct Tracked {
    PageRange range;
    std::unique_ptr<WriteFaults> faults;  // one unit per page
  };

  std::vector<Tracked> tracked_;
  std::vector<PageRange> runs_;  // scratch for Collect
  CollectStats last_;
};

Status MprotectTracker::Collect(void* base, size_t len, std::vector<PageRange>* out) {
  const auto start = reinterpret_cast<uintptr_t>(base);
  auto it = std::find_if(tracked_.begin(), tracked_.end(), [&](const Tracked& t) {
    return t.range.start <= start && start + len <= t.range.end;
  });
  if (it == tracked_.end() || start % kPageSize != 0 || len % kPageSize != 0) {
    return Status(Code::kNotFound, DescribeRange(start, start + len) +
                                       " is not page aligned inside a range added to this tracker");
  }
  WriteFaults& faults = *it->faults;
  const size_t p0 = faults.UnitOf(start);
  runs_.clear();
  // (X) for every page, before any (Y).
  last_.flag_words = faults.Take(p0, p0 + len / kPageSize, [&](size_t page, size_t n) {
    const uintptr_t first = faults.Span(page).start;
    AppendMerged(&runs_, 0, first, first + n * kPageSize);
  });
  for (const PageRange& r : runs_) {
    if (::mprotect(reinterpret_cast<void*>(r.start), r.bytes(), PROT_READ) != 0) {
      // Nothing may be lost: give every taken page back. Pages already
      // re-protected are then reported once more; harmless.
      const int err = errno;
      for (const PageRange& back : runs_) {
        for (uintptr_t a = back.start; a < back.end; a += kPageSize) faults.Flag(faults.UnitOf(a));
      }
      return Status::FromErrno(
          "mprotect tracker: re-protect " + DescribeRange(r.start, r.end) + " (vm.max_map_count?)",
          err);
    }
  }
  const size_t first = out->size();
  for (const PageRange& r : runs_) AppendMerged(out, first, r.start, r.end);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<DirtyTracker>> NewMprotectTracker() {
  return std::unique_ptr<DirtyTracker>(std::make_unique<MprotectTracker>());
}

CollectStats MprotectLastCollect(const DirtyTracker& tracker) {
  const auto* m = dynamic_cast<const MprotectTracker*>(&tracker);
  return m ? m->last_collect() : CollectStats{};
}

}  // namespace spare::region::internal
