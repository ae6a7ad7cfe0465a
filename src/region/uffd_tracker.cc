// The uffd-wp dirty tracker: userfaultfd in async write-protect mode plus
// the PAGEMAP_SCAN ioctl (Linux >= 6.7).
//
// With UFFD_FEATURE_WP_ASYNC the kernel resolves a write to a protected page
// by itself: it clears the page's uffd-wp bit and lets the write proceed, no
// handler thread and no signal. PAGEMAP_SCAN with PM_SCAN_WP_MATCHING then
// reports the pages whose bit is clear ("written") and sets it again, each
// page table entry under its page-table lock, so a concurrent write lands
// either before the scan reaches its page (reported now) or after (faults
// and is reported next time).
//
// Add() does not write-protect the range (UffdMode::kLazy, see
// tracker_internal.h): protecting every page installs a pte marker per page,
// which costs ~7 ms for 4 GiB, 2 MiB of page tables per GiB, and makes every
// later scan walk the whole range. Instead the range is handled in 2 MiB
// chunks (one page table each), each either lazy or sealed:
//
//   lazy    some entries may lack the uffd-wp bit without having been
//           written: never-touched entries, and pages mapped by a read (the
//           memfd's page-cache page, or the zero page). A write to a
//           MAP_PRIVATE mapping always creates a private anonymous page, so
//           the scan asks for the categories of every entry without the bit
//           (slow kernel path: it looks up each page, ~25 ns per resident
//           entry) and reports only the anonymous ones as written; the
//           read-mapped ones are write-protected as they are seen, losing
//           nothing. Chunks nobody touched have no page table and cost
//           nothing.
//   sealed  every entry carries the bit or a pte marker, so "no bit" means
//           "written" and the scan takes the kernel's fast path (~0.7 us
//           per chunk, ~15x cheaper than a lazy scan of a resident chunk).
//
// A lazy chunk in which the scan saw any entry is sealed right after that
// scan: its remaining empty entries get markers (a second scan that matches
// only entries neither present nor swapped). Both steps only ever add
// protection to pages that were not written, so a write racing with them is
// reported by this scan or the next. Reads of a marker keep the bit, so a
// sealed chunk stays sealed. Should an entry lose it some other way (an
// munmap'd and refaulted page table, MADV_DONTNEED of a written page), the
// fast path reports that page once more as written: a clean page shipped
// again, never a lost write.
//
// Chunk guard (ChunkGuardPolicy, tracker_internal.h). Even the fast path
// walks all 512 entries of a sealed chunk (~1 us), so a commit that wrote
// one page of a resident 4 GiB region would still cost ~2-3 ms. A sealed
// chunk found clean by `need` collections in a row is therefore *guarded*:
// made PROT_READ as a whole (Y), then scanned once more, and skipped by
// later collections while its write-fault flags (write_fault.h, one unit
// per 64 KiB) stay clear. A write into it faults; the shared SIGSEGV
// handler flags the unit (A1), makes that 64 KiB writable (B) and flags it
// again (A2). A collection takes the flags of the chunks it wholly covers
// (X), re-protects the flagged units (Y) — or, for a chunk written too
// often, makes the whole chunk writable and scans it every time again —
// and then PAGEMAP_SCANs every flagged chunk. Why nothing is lost:
//   - Guarding: Y comes before the scan. A write before Y clears its page's
//     uffd-wp bit and the scan reports it; a write after Y faults.
//   - Skipping: a page written since the chunk's last scan was written
//     while its unit was writable, i.e. after some B (write_fault.cc), so
//     its unit is flagged and not yet taken, and the chunk is scanned —
//     by this collection if the write happened before it started (A1
//     precedes B), else by this or the next one.
//   - Taking: X, then Y, then the scan. A write before the scan has cleared
//     its uffd-wp bit (the scan reports it); a write after Y faults again.
//     The scan sets the bits of what it reports under the page-table lock,
//     as without the guard.
//   - mprotect never touches uffd-wp bits or pte markers, so the page-level
//     state the scan reads is the same as without the guard.
//   - A chunk only partly inside the collected range is scanned (its part)
//     if any of its units is flagged, without taking the flags: they may
//     belong to pages outside the range.
// Cost: a first write into a guarded 64 KiB unit ~10-15 us (signal +
// mprotect), its re-protection ~5-10 us, guarding a resident chunk 50-100 us
// (mprotect rewrites 512 entries). The policy keeps frequently written
// chunks in the scanned set so random-write workloads do not pay that.
// Caveats: the kernel's own writes into a guarded chunk (read(2) into the
// region) fail with EFAULT — SPARE_UFFD_GUARD=off turns the guard off; and
// each read-only chunk or writable unit inside one splits a mapping:
// guarded chunks are capped process-wide at vm.max_map_count / 8, and
// should a unit's mprotect still fail the handler makes the whole range
// writable and flags every unit (one collection then scans and re-protects
// the whole range) rather than crash.
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/fd.h"
#include "region/mapping.h"
#include "region/tracker_internal.h"
#include "region/uffd_compat.h"
#include "region/write_fault.h"

namespace spare::region::internal {
namespace {

constexpr uint64_t kFeatures = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
// Output entries per PAGEMAP_SCAN call (24 bytes each); more runs than this
// just take another call.
constexpr size_t kScanVecLen = 2048;
// Sealing granularity: what one last-level page table maps on x86-64.
constexpr uintptr_t kChunk = uintptr_t{2} << 20;

uintptr_t ChunkOf(uintptr_t addr) { return addr / kChunk; }

// Scan masks (see the top of the file).
struct ScanMasks {
  uint64_t flags, category_mask, category_inverted, category_anyof_mask, return_mask;
};
// Sealed chunks: no uffd-wp bit means written (the kernel's fast path).
constexpr ScanMasks kWrittenMasks{PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0,
                                  0, PAGE_IS_WRITTEN};
// Lazy chunks: every present or swapped entry without the bit, with the
// categories that tell a written page from a read-mapped one.
constexpr ScanMasks kLazyMasks{PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN, 0,
                               PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                               PAGE_IS_WRITTEN | PAGE_IS_FILE | PAGE_IS_PFNZERO};
// Sealing: entries neither present nor swapped get a pte marker.
constexpr ScanMasks kEmptyMasks{PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                                PAGE_IS_PRESENT | PAGE_IS_SWAPPED, 0, PAGE_IS_PRESENT};

// A page the lazy scan reported that holds written data (not a page-cache
// or zero page mapped by a read).
bool IsWrittenData(const page_region& r) {
  return (r.categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO)) == 0;
}

// ioctl that retries when interrupted or when the kernel asks to (EAGAIN is
// returned while the address space is changing underneath).
int Ioctl(int fd, unsigned long request, void* arg) {
  for (int attempt = 0;; ++attempt) {
    int rc = ::ioctl(fd, request, arg);
    if (rc >= 0 || (errno != EINTR && errno != EAGAIN) || attempt == 100) return rc;
  }
}

// A userfaultfd limited to user-mode faults: that is all async write-protect
// needs, and it is what unprivileged processes may open when
// vm.unprivileged_userfaultfd = 0. Falls back to /dev/userfaultfd when the
// syscall is filtered (seccomp) or refused.
Result<UniqueFd> OpenUserfaultfd() {
  UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
  if (fd.valid()) return fd;
  const int syscall_err = errno;
  UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
  if (dev.valid()) {
    fd.reset(::ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (fd.valid()) return fd;
    return Status::FromErrno("ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)", errno);
  }
  return Status::FromErrno("userfaultfd(UFFD_USER_MODE_ONLY) (and /dev/userfaultfd: " +
                               std::string(std::strerror(errno)) + ")",
                           syscall_err);
}

// kLazy relies on writes creating anonymous pages, which holds only for
// private mappings: a write to a MAP_SHARED page would never be reported.
// Checked once per Add(); the cost grows with the number of mappings.
Status CheckPrivate(uintptr_t start, uintptr_t end) {
  std::unique_ptr<FILE, int (*)(FILE*)> maps(std::fopen("/proc/self/maps", "re"), &std::fclose);
  if (!maps) return Status::FromErrno("open /proc/self/maps", errno);
  char* line = nullptr;
  size_t cap = 0;
  Status st = Status::Ok();
  while (st.ok() && ::getline(&line, &cap, maps.get()) > 0) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
    if (hi <= start || lo >= end) continue;
    if (perms[3] != 'p') {
      st = Status(Code::kInvalidArgument, "uffd-wp: " + DescribeRange(start, end) +
                                              " includes shared mapping " + DescribeRange(lo, hi) +
                                              "; regions must be MAP_PRIVATE or anonymous");
    }
  }
  std::free(line);
  return st;
}

// Chunks a process may guard at once, over all trackers: each guarded chunk
// can add two mappings (a read-only island and the writable rest), so the
// guard may use at most a quarter of vm.max_map_count. Past it, clean
// chunks just stay in the scanned set.
size_t GuardBudget() {
  static const size_t budget = [] {
    size_t max_map_count = 65530;  // the kernel's default
    if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "re")) {
      unsigned long v = 0;
      if (std::fscanf(f, "%lu", &v) == 1 && v > 0) max_map_count = v;
      std::fclose(f);
    }
    return max_map_count / 8;
  }();
  return budget;
}
std::atomic<size_t> g_guarded{0};  // chunks guarded by all uffd trackers

class UffdTracker final : public DirtyTracker {
 public:
  UffdTracker(UffdMode mode, ChunkGuardPolicy policy, UniqueFd uffd, UniqueFd pagemap)
      : mode_(mode),
        policy_(policy),
        uffd_(std::move(uffd)),
        pagemap_(std::move(pagemap)),
        vec_(kScanVecLen) {}

  // Closing the userfaultfd unregisters every range still added; guarded
  // chunks are made writable first.
  ~UffdTracker() override {
    for (auto& [start, chunks] : chunks_) (void)Unguard(&chunks);
  }

  static Result<std::unique_ptr<UffdTracker>> Open(UffdMode mode, ChunkGuardPolicy policy) {
    SPARE_ASSIGN_OR_RETURN(UniqueFd uffd, OpenUserfaultfd());
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = kFeatures;
    if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0) {
      return Status::FromErrno("UFFDIO_API with WP_ASYNC | WP_UNPOPULATED", errno);
    }
    if ((api.features & kFeatures) != kFeatures) {
      return Status(Code::kUnsupported, "userfaultfd lacks WP_ASYNC or WP_UNPOPULATED");
    }
    // Opened once: the scan runs on every commit. Note the fd is bound to
    // this process's address space — after fork() it still scans the parent.
    UniqueFd pagemap(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (!pagemap.valid()) return Status::FromErrno("open /proc/self/pagemap", errno);
    return std::make_unique<UffdTracker>(mode, policy, std::move(uffd), std::move(pagemap));
  }

  Status Add(void* base, size_t len) override {
    SPARE_RETURN_IF_ERROR(ranges_.CheckNew(base, len));
    const auto start = reinterpret_cast<uintptr_t>(base);
    const std::string what = "uffd-wp: " + DescribeRange(start, start + len);

    std::unique_ptr<WriteFaults> faults;
    if (policy_.enabled) {
      SPARE_ASSIGN_OR_RETURN(
          faults, WriteFaults::Publish({start, start + len}, kUnitShift, "uffd-wp chunk guard"));
    }
    uffdio_register reg{};
    reg.range = {start, len};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (Ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0) {
      const int err = errno;
      return Status::FromErrno(what +
                                   ": UFFDIO_REGISTER (range must be fully mapped, "
                                   "anonymous or memfd, and not tracked elsewhere)",
                               err);
    }
    if ((reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT)) == 0) {
      (void)Unregister(start, len);
      return Status(Code::kUnsupported, what + ": kernel cannot write-protect this mapping");
    }
    // Every page starts clean.
    Chunks& chunks = chunks_[start];
    chunks.first = ChunkOf(start);
    chunks.start = start;
    chunks.end = start + len;
    const size_t n = ChunkOf(start + len - 1) - chunks.first + 1;
    chunks.sealed.assign(n, mode_ == UffdMode::kEager);
    chunks.guard.assign(n, ChunkState{.need = policy_.initial_need});
    chunks.faults = std::move(faults);
    Status st = mode_ == UffdMode::kLazy ? ProtectWritten(start, len) : ProtectAll(start, len);
    if (!st.ok()) {
      (void)Unguard(&chunks);
      chunks_.erase(start);
      (void)Unregister(start, len);
      return st.With(what);
    }
    ranges_.Insert(base, len);
    return Status::Ok();
  }

  Status Remove(void* base, size_t len) override {
    const auto start = reinterpret_cast<uintptr_t>(base);
    // Writable before unpublishing, so no write can fault into a missing
    // slot; a range that cannot be made writable stays tracked.
    auto it = chunks_.find(start);
    if (it != chunks_.end() && it->second.end == start + len) {
      SPARE_RETURN_IF_ERROR(Unguard(&it->second));
    }
    SPARE_RETURN_IF_ERROR(ranges_.Erase(base, len));
    chunks_.erase(start);  // unpublishes
    return Unregister(start, len);
  }

  Status Collect(void* base, size_t len, std::vector<PageRange>* out) override {
    SPARE_ASSIGN_OR_RETURN(PageRange range, ranges_.FindContaining(base, len));
    const auto start = reinterpret_cast<uintptr_t>(base);
    return CollectChunks(range, start, start + len, out);
  }

  std::string_view name() const override { return "uffd-wp"; }

  // For tests and measurements: how many chunks of the range added at
  // `base` are sealed.
  size_t SealedChunks(const void* base) const {
    auto it = chunks_.find(reinterpret_cast<uintptr_t>(base));
    if (it == chunks_.end()) return 0;
    size_t n = 0;
    for (bool b : it->second.sealed) n += b;
    return n;
  }

  CollectStats last_collect() const { return last_; }

 private:
  // A write into a guarded chunk makes only its 64 KiB unit writable
  // (mprotect costs ~0.1 us per resident page, so 2 MiB would cost ~50 us
  // in the fault and again to re-protect it).
  static constexpr unsigned kUnitShift = 16;
  static_assert(kChunk % (uintptr_t{1} << kUnitShift) == 0);

  // Guard state of one chunk (see the top of the file).
  struct ChunkState {
    uint64_t since = 0;   // guarded: the collection that guarded it
    uint16_t clean = 0;   // scanned: consecutive collections that found it clean
    uint16_t need = 0;    // clean collections before it is guarded
    uint16_t writes = 0;  // guarded: collections since `since` that found it written
    bool guarded = false;
    bool ready = false;    // on Chunks::ready
    bool scan = false;     // scratch: guarded, but scan it in this collection
    bool written = false;  // scratch: this collection reported a page in it
  };

  // Seal and guard state of one added range, per 2 MiB chunk of address
  // space; chunk i is [ChunkOf(a) - first == i] for a in the range.
  struct Chunks {
    uintptr_t first = 0;  // ChunkOf(range start)
    uintptr_t start = 0;  // the range
    uintptr_t end = 0;
    std::vector<bool> sealed;
    std::vector<ChunkState> guard;
    std::unique_ptr<WriteFaults> faults;  // one unit per chunk; null: guard off
    size_t guarded = 0;                   // chunks with guard[i].guarded
    uint64_t collections = 0;
    std::vector<size_t> ready;  // scanned chunks clean for `need` collections, once each
  };

  // The bytes of chunk i inside the range.
  static PageRange ChunkSpan(const Chunks& c, size_t i) {
    return {std::max((c.first + i) * kChunk, c.start), std::min((c.first + i + 1) * kChunk, c.end)};
  }

  // kLazy: only pages already written in the range need protecting; the
  // pages they would report are discarded.
  Status ProtectWritten(uintptr_t start, size_t len) {
    SPARE_RETURN_IF_ERROR(CheckPrivate(start, start + len));
    std::vector<PageRange> discard;
    return CollectChunks({start, start + len}, start, start + len, &discard);
  }

  // kEager: protecting pages that were never touched installs pte markers
  // (always for file-backed mappings; for anonymous ones because of
  // WP_UNPOPULATED), so their first write is seen too.
  Status ProtectAll(uintptr_t start, size_t len) {
    uffdio_writeprotect wp{};
    wp.range = {start, len};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (Ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
      return Status::FromErrno("UFFDIO_WRITEPROTECT", errno);
    }
    return Status::Ok();
  }

  Status CollectChunks(PageRange range, uintptr_t start, uintptr_t end,
                       std::vector<PageRange>* out);
  void PrepareGuard(Chunks* chunks, size_t c0, size_t c1, size_t f0, size_t f1);
  bool KeepGuarded(Chunks* chunks, size_t i);
  bool AnyFlagged(const Chunks& chunks, size_t i) const;
  void GuardReady(Chunks* chunks, size_t f0, size_t f1);
  void ProtectChunks(Chunks* chunks);
  void AfterScan(Chunks* chunks, size_t c0, size_t c1, size_t f0, size_t f1);
  void SetGuarded(Chunks* chunks, size_t i, bool guarded);
  Status Unguard(Chunks* chunks);
  Status Seal(PageRange range, uintptr_t start, uintptr_t end, Chunks* chunks);
  template <typename OnRun>
  Status Scan(uintptr_t start, uintptr_t end, const ScanMasks& masks, OnRun&& on_run);

  Status Unregister(uintptr_t start, size_t len) {
    uffdio_range range{start, len};
    if (Ioctl(uffd_.get(), UFFDIO_UNREGISTER, &range) != 0) {
      return Status::FromErrno("uffd-wp: UFFDIO_UNREGISTER " + DescribeRange(start, start + len),
                               errno);
    }
    return Status::Ok();
  }

  const UffdMode mode_;
  const ChunkGuardPolicy policy_;
  UniqueFd uffd_;
  UniqueFd pagemap_;
  RangeList ranges_;
  std::map<uintptr_t, Chunks> chunks_;  // by range start
  std::vector<page_region> vec_;        // reused by every Collect
  std::vector<uintptr_t> used_;         // chunks a lazy scan saw in use
  std::vector<PageRange> protect_;      // to make read-only (Y) in this collection
  std::vector<size_t> demote_;          // chunks no longer guarded in this collection
  CollectStats last_;
};

Status UffdTracker::CollectChunks(PageRange range, uintptr_t start, uintptr_t end,
                                  std::vector<PageRange>* out) {
  Chunks& chunks = chunks_.at(range.start);
  ++chunks.collections;
  last_ = {};
  const size_t c0 = ChunkOf(start) - chunks.first;
  const size_t c1 = ChunkOf(end - 1) - chunks.first + 1;
  // [f0, f1): the chunks wholly inside [start, end), the only ones whose
  // guard state this collection may change.
  const size_t f0 = c0 + (ChunkSpan(chunks, c0).start < start ? 1 : 0);
  const size_t f1 = std::max(f0, c1 - (ChunkSpan(chunks, c1 - 1).end > end ? 1 : 0));
  if (chunks.faults) PrepareGuard(&chunks, c0, c1, f0, f1);

  // Runs of chunks to skip (guarded, not written), to scan sealed (fast
  // path) or lazy; output stays in address order.
  const size_t first = out->size();
  auto skip = [&](size_t i) { return chunks.guard[i].guarded && !chunks.guard[i].scan; };
  auto mark_written = [&](const page_region& r) {
    for (uintptr_t c = ChunkOf(r.start); c <= ChunkOf(r.end - 1); ++c) {
      chunks.guard[c - chunks.first].written = true;
    }
  };
  for (size_t i = c0; i < c1;) {
    size_t j = i + 1;
    if (skip(i)) {
      while (j < c1 && skip(j)) ++j;
      i = j;
      continue;
    }
    const bool sealed = chunks.sealed[i];
    while (j < c1 && !skip(j) && chunks.sealed[j] == sealed) ++j;
    const uintptr_t lo = std::max(start, ChunkSpan(chunks, i).start);
    const uintptr_t hi = std::min(end, ChunkSpan(chunks, j - 1).end);
    last_.chunks_scanned += j - i;
    if (sealed) {
      SPARE_RETURN_IF_ERROR(Scan(lo, hi, kWrittenMasks, [&](const page_region& r) {
        AppendMerged(out, first, r.start, r.end);
        mark_written(r);
      }));
    } else {
      used_.clear();
      SPARE_RETURN_IF_ERROR(Scan(lo, hi, kLazyMasks, [&](const page_region& r) {
        if (IsWrittenData(r)) {
          AppendMerged(out, first, r.start, r.end);
          mark_written(r);
        }
        for (uintptr_t c = ChunkOf(r.start); c <= ChunkOf(r.end - 1); ++c) {
          if (used_.empty() || used_.back() != c) used_.push_back(c);
        }
      }));
      SPARE_RETURN_IF_ERROR(Seal(range, start, end, &chunks));
    }
    // Only now: a chunk whose scan failed keeps `scan` and is scanned again
    // next time even if guarded.
    if (chunks.faults) AfterScan(&chunks, i, j, f0, f1);
    i = j;
  }
  last_.chunks_guarded = chunks.guarded;
  return Status::Ok();
}

// Before the scans: takes the flags of guarded chunks (X), decides which of
// them stay guarded, guards the chunks that became ready, and makes read-
// only (Y) the written units of chunks that stay guarded and the whole of
// newly guarded chunks. Every chunk taken or newly guarded is scanned by
// this collection, after its Y.
void UffdTracker::PrepareGuard(Chunks* chunks, size_t c0, size_t c1, size_t f0, size_t f1) {
  WriteFaults& faults = *chunks->faults;
  protect_.clear();
  demote_.clear();
  if (f0 < f1) {
    const size_t u0 = faults.UnitOf(ChunkSpan(*chunks, f0).start);
    const size_t u1 = faults.UnitOf(ChunkSpan(*chunks, f1 - 1).end - 1) + 1;
    size_t decided = SIZE_MAX;  // the chunk of the last unit taken
    bool keep = false;
    last_.flag_words = faults.Take(u0, u1, [&](size_t u, size_t n) {
      for (size_t k = u; k < u + n; ++k) {
        const PageRange span = faults.Span(k);
        const size_t i = ChunkOf(span.start) - chunks->first;
        // A scanned chunk's flag (a late A2 of a fault from before it was
        // demoted) means nothing: it is scanned anyway.
        if (i != decided && !chunks->guard[i].guarded) continue;
        if (i != decided) {
          decided = i;
          keep = KeepGuarded(chunks, i);
        }
        if (keep) protect_.push_back(span);
      }
    });
  }
  // The handler left written units writable; a chunk no longer guarded is
  // made writable as a whole, so scanned chunks hold no read-only islands
  // (each one a mapping, and a fault on its next write).
  for (size_t i : demote_) {
    const PageRange span = ChunkSpan(*chunks, i);
    (void)::mprotect(reinterpret_cast<void*>(span.start), span.bytes(), PROT_READ | PROT_WRITE);
  }
  // A chunk only partly inside [start, end) may be flagged for pages this
  // collection does not own: look without taking, scan if flagged.
  for (size_t i : {c0, c1 - 1}) {
    if ((i < f0 || i >= f1) && chunks->guard[i].guarded && AnyFlagged(*chunks, i)) {
      chunks->guard[i].scan = true;
    }
  }
  GuardReady(chunks, f0, f1);
  ProtectChunks(chunks);
}

// For a guarded chunk found written: scan it in this collection, and say
// whether it stays guarded (policy at the top of the file).
bool UffdTracker::KeepGuarded(Chunks* chunks, size_t i) {
  ChunkState& g = chunks->guard[i];
  g.scan = true;
  g.writes = static_cast<uint16_t>(std::min<uint32_t>(g.writes + 1u, 0xFFFF));
  const uint64_t age = chunks->collections - g.since;
  if (g.writes < policy_.min_writes || age >= uint64_t{policy_.break_even} * g.writes) {
    return true;
  }
  g.need = static_cast<uint16_t>(std::min<uint32_t>(policy_.max_need, g.need * 8u));
  g.clean = 0;
  SetGuarded(chunks, i, false);
  demote_.push_back(i);
  return false;
}

bool UffdTracker::AnyFlagged(const Chunks& chunks, size_t i) const {
  const PageRange span = ChunkSpan(chunks, i);
  for (size_t u = chunks.faults->UnitOf(span.start); u <= chunks.faults->UnitOf(span.end - 1);
       ++u) {
    if (chunks.faults->Peek(u)) return true;
  }
  return false;
}

// Guards the chunks on the ready list that lie in [f0, f1) and are still
// clean enough, within the process-wide budget.
void UffdTracker::GuardReady(Chunks* chunks, size_t f0, size_t f1) {
  size_t kept = 0, guarded = 0;
  for (size_t i : chunks->ready) {
    ChunkState& g = chunks->guard[i];
    if (i < f0 || i >= f1 || guarded == policy_.max_guard_per_collect) {
      chunks->ready[kept++] = i;  // for a later collection
      continue;
    }
    g.ready = false;
    if (g.guarded || !chunks->sealed[i] || g.clean < g.need) continue;
    if (g_guarded.load(std::memory_order_relaxed) >= GuardBudget()) continue;
    SetGuarded(chunks, i, true);
    ++guarded;
    g.since = chunks->collections;
    g.writes = 0;
    g.scan = true;
    protect_.push_back(ChunkSpan(*chunks, i));
  }
  chunks->ready.resize(kept);
}

// (Y) for everything in protect_, before any scan. A chunk that cannot be
// made read-only (vm.max_map_count, or memory for the split) is scanned
// from now on and made writable again; should that fail too, the part
// that stayed read-only faults into the handler, which makes it writable,
// and the flag is ignored.
void UffdTracker::ProtectChunks(Chunks* chunks) {
  std::sort(protect_.begin(), protect_.end(),
            [](const PageRange& a, const PageRange& b) { return a.start < b.start; });
  for (size_t i = 0; i < protect_.size();) {
    size_t j = i + 1;
    while (j < protect_.size() && protect_[j].start == protect_[j - 1].end) ++j;
    const uintptr_t lo = protect_[i].start;
    const uintptr_t hi = protect_[j - 1].end;
    if (::mprotect(reinterpret_cast<void*>(lo), hi - lo, PROT_READ) != 0) {
      for (uintptr_t c = ChunkOf(lo); c <= ChunkOf(hi - 1); ++c) {
        SetGuarded(chunks, c - chunks->first, false);
        const PageRange span = ChunkSpan(*chunks, c - chunks->first);
        (void)::mprotect(reinterpret_cast<void*>(span.start), span.bytes(), PROT_READ | PROT_WRITE);
      }
    }
    i = j;
  }
}

// After chunks [i, j) were scanned: counts clean collections of the
// scanned chunks wholly inside this collection and lists those clean for
// long enough; clears the scratch flags.
void UffdTracker::AfterScan(Chunks* chunks, size_t i, size_t j, size_t f0, size_t f1) {
  for (size_t k = i; k < j; ++k) {
    ChunkState& g = chunks->guard[k];
    if (k >= f0 && k < f1 && !g.guarded) {
      g.clean = g.written ? 0 : static_cast<uint16_t>(std::min<uint32_t>(g.clean + 1u, 0xFFFF));
      if (chunks->sealed[k] && g.clean >= g.need && !g.ready) {
        g.ready = true;
        chunks->ready.push_back(k);
      }
    }
    g.scan = false;
    g.written = false;
  }
}

void UffdTracker::SetGuarded(Chunks* chunks, size_t i, bool guarded) {
  ChunkState& g = chunks->guard[i];
  if (g.guarded == guarded) return;
  g.guarded = guarded;
  if (guarded) {
    ++chunks->guarded;
    g_guarded.fetch_add(1, std::memory_order_relaxed);
  } else {
    --chunks->guarded;
    g_guarded.fetch_sub(1, std::memory_order_relaxed);
  }
}

// Makes the whole range writable and forgets its guards (before Remove).
// Also with no chunk guarded: a failed re-protection may have left part of
// a chunk read-only.
Status UffdTracker::Unguard(Chunks* chunks) {
  if (!chunks->faults) return Status::Ok();
  if (::mprotect(reinterpret_cast<void*>(chunks->start), chunks->end - chunks->start,
                 PROT_READ | PROT_WRITE) != 0) {
    return Status::FromErrno(
        "uffd-wp: make " + DescribeRange(chunks->start, chunks->end) + " writable", errno);
  }
  for (size_t i = 0; i < chunks->guard.size(); ++i) SetGuarded(chunks, i, false);
  return Status::Ok();
}

// Seals the chunks listed in used_ that lie wholly inside [start, end)
// (as clipped to the added range): a chunk partly outside may hold
// written pages this collection must not touch, so it stays lazy.
Status UffdTracker::Seal(PageRange range, uintptr_t start, uintptr_t end, Chunks* chunks) {
  for (size_t i = 0; i < used_.size();) {
    size_t j = i + 1;
    while (j < used_.size() && used_[j] == used_[j - 1] + 1) ++j;
    uintptr_t lo = std::max(range.start, used_[i] * kChunk);
    uintptr_t hi = std::min(range.end, (used_[j - 1] + 1) * kChunk);
    if (lo < start) lo = std::min(hi, (ChunkOf(lo) + 1) * kChunk);
    if (hi > end) hi = std::max(lo, ChunkOf(hi - 1) * kChunk);
    if (lo < hi) {
      SPARE_RETURN_IF_ERROR(Scan(lo, hi, kEmptyMasks, [](const page_region&) {}));
      for (uintptr_t c = ChunkOf(lo); c <= ChunkOf(hi - 1); ++c) {
        chunks->sealed[c - chunks->first] = true;
      }
    }
    i = j;
  }
  return Status::Ok();
}

// One PAGEMAP_SCAN pass over [start, end) with `masks`, calling
// on_run(region) for each run reported (and write-protected).
template <typename OnRun>
Status UffdTracker::Scan(uintptr_t start, uintptr_t end, const ScanMasks& masks, OnRun&& on_run) {
  pm_scan_arg arg{};
  arg.size = sizeof arg;
  arg.flags = masks.flags;
  arg.start = start;
  arg.end = end;
  arg.vec = reinterpret_cast<uintptr_t>(vec_.data());
  arg.vec_len = vec_.size();
  arg.category_mask = masks.category_mask;
  arg.category_inverted = masks.category_inverted;
  arg.category_anyof_mask = masks.category_anyof_mask;
  arg.return_mask = masks.return_mask;
  // The kernel stops early when vec_ is full; walk_end says where. Pages
  // past walk_end were neither reported nor re-protected, so continuing
  // from there loses nothing.
  while (arg.start < arg.end) {
    const int n = ::ioctl(pagemap_.get(), PAGEMAP_SCAN, &arg);
    if (n < 0) {
      // Pages scanned before the error may have been re-protected without
      // being returned to us: the caller must treat the range as dirty.
      return Status::FromErrno("uffd-wp: PAGEMAP_SCAN " + DescribeRange(arg.start, arg.end) +
                                   " (dirty state lost; resync the whole range)",
                               errno);
    }
    for (int i = 0; i < n; ++i) on_run(vec_[i]);
    if (arg.walk_end <= arg.start || arg.walk_end > arg.end) {
      return Status(Code::kInternal, "uffd-wp: PAGEMAP_SCAN made no progress at " +
                                         DescribeRange(arg.start, arg.end));
    }
    arg.start = arg.walk_end;
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<DirtyTracker>> NewUffdTracker() {
  SPARE_ASSIGN_OR_RETURN(ChunkGuardPolicy policy, ChunkGuardPolicyFromEnv());
  return NewUffdTracker(UffdProbe().mode, policy);
}

size_t UffdSealedChunks(const DirtyTracker& tracker, const void* base) {
  const auto* uffd = dynamic_cast<const UffdTracker*>(&tracker);
  return uffd ? uffd->SealedChunks(base) : 0;
}

CollectStats UffdLastCollect(const DirtyTracker& tracker) {
  const auto* uffd = dynamic_cast<const UffdTracker*>(&tracker);
  return uffd ? uffd->last_collect() : CollectStats{};
}

Result<std::unique_ptr<DirtyTracker>> NewUffdTracker(UffdMode mode, ChunkGuardPolicy guard) {
  SPARE_ASSIGN_OR_RETURN(std::unique_ptr<UffdTracker> t, UffdTracker::Open(mode, guard));
  return std::unique_ptr<DirtyTracker>(std::move(t));
}

}  // namespace spare::region::internal
