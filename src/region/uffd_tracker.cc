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
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
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
constexpr ScanMasks kWrittenMasks{PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN,
                                  0, 0, PAGE_IS_WRITTEN};
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

class UffdTracker final : public DirtyTracker {
 public:
  UffdTracker(UffdMode mode, UniqueFd uffd, UniqueFd pagemap)
      : mode_(mode), uffd_(std::move(uffd)), pagemap_(std::move(pagemap)), vec_(kScanVecLen) {}

  // Closing the userfaultfd unregisters every range still added.
  ~UffdTracker() override = default;

  static Result<std::unique_ptr<UffdTracker>> Open(UffdMode mode) {
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
    return std::make_unique<UffdTracker>(mode, std::move(uffd), std::move(pagemap));
  }

  Status Add(void* base, size_t len) override {
    SPARE_RETURN_IF_ERROR(ranges_.CheckNew(base, len));
    const auto start = reinterpret_cast<uintptr_t>(base);
    const std::string what = "uffd-wp: " + DescribeRange(start, start + len);

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
    chunks.sealed.assign(ChunkOf(start + len - 1) - chunks.first + 1, mode_ == UffdMode::kEager);
    Status st = mode_ == UffdMode::kLazy ? ProtectWritten(start, len) : ProtectAll(start, len);
    if (!st.ok()) {
      chunks_.erase(start);
      (void)Unregister(start, len);
      return st.With(what);
    }
    ranges_.Insert(base, len);
    return Status::Ok();
  }

  Status Remove(void* base, size_t len) override {
    SPARE_RETURN_IF_ERROR(ranges_.Erase(base, len));
    chunks_.erase(reinterpret_cast<uintptr_t>(base));
    return Unregister(reinterpret_cast<uintptr_t>(base), len);
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

 private:
  // Seal state of one added range, per 2 MiB chunk of address space.
  struct Chunks {
    uintptr_t first = 0;       // ChunkOf(range start)
    std::vector<bool> sealed;  // [ChunkOf(a) - first] for a in the range
  };

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

  // Collects [start, end), part of the added `range`: runs of sealed chunks
  // with the fast scan, runs of lazy ones with the lazy scan, then seals the
  // lazy chunks that scan found in use. Output stays in address order.
  Status CollectChunks(PageRange range, uintptr_t start, uintptr_t end,
                       std::vector<PageRange>* out) {
    Chunks& chunks = chunks_.at(range.start);
    const size_t first = out->size();
    uintptr_t at = start;
    while (at < end) {
      const bool sealed = chunks.sealed[ChunkOf(at) - chunks.first];
      uintptr_t run_end = at;
      while (run_end < end && chunks.sealed[ChunkOf(run_end) - chunks.first] == sealed) {
        run_end = std::min(end, (ChunkOf(run_end) + 1) * kChunk);
      }
      if (sealed) {
        SPARE_RETURN_IF_ERROR(Scan(at, run_end, kWrittenMasks, [&](const page_region& r) {
          AppendMerged(out, first, r.start, r.end);
        }));
      } else {
        used_.clear();
        SPARE_RETURN_IF_ERROR(Scan(at, run_end, kLazyMasks, [&](const page_region& r) {
          if (IsWrittenData(r)) AppendMerged(out, first, r.start, r.end);
          for (uintptr_t c = ChunkOf(r.start); c <= ChunkOf(r.end - 1); ++c) {
            if (used_.empty() || used_.back() != c) used_.push_back(c);
          }
        }));
        SPARE_RETURN_IF_ERROR(Seal(range, start, end, &chunks));
      }
      at = run_end;
    }
    return Status::Ok();
  }

  // Seals the chunks listed in used_ that lie wholly inside [start, end)
  // (as clipped to the added range): a chunk partly outside may hold
  // written pages this collection must not touch, so it stays lazy.
  Status Seal(PageRange range, uintptr_t start, uintptr_t end, Chunks* chunks) {
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
  Status Scan(uintptr_t start, uintptr_t end, const ScanMasks& masks, OnRun&& on_run) {
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

  Status Unregister(uintptr_t start, size_t len) {
    uffdio_range range{start, len};
    if (Ioctl(uffd_.get(), UFFDIO_UNREGISTER, &range) != 0) {
      return Status::FromErrno("uffd-wp: UFFDIO_UNREGISTER " + DescribeRange(start, start + len),
                               errno);
    }
    return Status::Ok();
  }

  const UffdMode mode_;
  UniqueFd uffd_;
  UniqueFd pagemap_;
  RangeList ranges_;
  std::map<uintptr_t, Chunks> chunks_;  // by range start
  std::vector<page_region> vec_;        // reused by every Collect
  std::vector<uintptr_t> used_;         // chunks a lazy scan saw in use
};

// A mapping that goes away with the scope.
struct ScopedMap {
  void* p = MAP_FAILED;
  size_t len = 0;
  ~ScopedMap() {
    if (p != MAP_FAILED) ::munmap(p, len);
  }
  char* page(size_t i) const { return static_cast<char*>(p) + i * kPageSize; }
  PageRange pages(size_t a, size_t b) const {
    return {reinterpret_cast<uintptr_t>(page(a)), reinterpret_cast<uintptr_t>(page(b))};
  }
};

// Runs the whole mechanism once, on the two shapes regions have (MAP_PRIVATE
// memfd, anonymous): a kernel can advertise the features and still refuse
// them for shmem-backed mappings, lack PAGEMAP_SCAN, or classify pages
// differently from what kLazy assumes.
Status SelfTest(UffdMode mode) {
  SPARE_ASSIGN_OR_RETURN(auto tracker, UffdTracker::Open(mode));
  SPARE_ASSIGN_OR_RETURN(UniqueFd memfd, CreateMemfd("spare-uffd-probe", 3 * kPageSize));
  if (::pwrite(memfd.get(), "image", 5, kPageSize) != 5) {
    return Status::FromErrno("probe pwrite", errno);
  }
  ScopedMap file{
      ::mmap(nullptr, 3 * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd.get(), 0),
      3 * kPageSize};
  ScopedMap anon{
      ::mmap(nullptr, 2 * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      2 * kPageSize};
  if (file.p == MAP_FAILED || anon.p == MAP_FAILED) return Status::FromErrno("probe mmap", errno);
  auto poke = [](char* p) { *reinterpret_cast<volatile char*>(p) = 1; };
  auto peek = [](const char* p) { return *reinterpret_cast<const volatile char*>(p); };

  poke(file.page(0));  // written before Add: must start clean
  SPARE_RETURN_IF_ERROR(tracker->Add(file.p, file.len));
  SPARE_RETURN_IF_ERROR(tracker->Add(anon.p, anon.len));
  if (peek(file.page(1)) != 'i') return Status(Code::kInternal, "probe: memfd content not mapped");
  (void)peek(anon.page(0));  // reads must not count as writes
  poke(file.page(2));
  poke(anon.page(1));
  for (int round = 0; round < 2; ++round) {
    std::vector<PageRange> f, a;
    SPARE_RETURN_IF_ERROR(tracker->Collect(file.p, file.len, &f));
    SPARE_RETURN_IF_ERROR(tracker->Collect(anon.p, anon.len, &a));
    const bool want = round == 0;  // second round: everything re-protected
    if (f != (want ? std::vector<PageRange>{file.pages(2, 3)} : std::vector<PageRange>{}) ||
        a != (want ? std::vector<PageRange>{anon.pages(1, 2)} : std::vector<PageRange>{})) {
      return Status(Code::kUnsupported,
                    std::string("self-test: PAGEMAP_SCAN reported wrong pages (") +
                        (mode == UffdMode::kLazy ? "lazy" : "eager") + " mode)");
    }
  }
  return Status::Ok();
}

UffdSupport Probe() {
  if (Status lazy = SelfTest(UffdMode::kLazy); lazy.ok()) return {Status::Ok(), UffdMode::kLazy};
  Status eager = SelfTest(UffdMode::kEager);
  return {eager, UffdMode::kEager};
}

}  // namespace

const UffdSupport& UffdProbe() {
  static const UffdSupport support = Probe();
  return support;
}

Result<std::unique_ptr<DirtyTracker>> NewUffdTracker() { return NewUffdTracker(UffdProbe().mode); }

size_t UffdSealedChunks(const DirtyTracker& tracker, const void* base) {
  const auto* uffd = dynamic_cast<const UffdTracker*>(&tracker);
  return uffd ? uffd->SealedChunks(base) : 0;
}

Result<std::unique_ptr<DirtyTracker>> NewUffdTracker(UffdMode mode) {
  SPARE_ASSIGN_OR_RETURN(std::unique_ptr<UffdTracker> t, UffdTracker::Open(mode));
  return std::unique_ptr<DirtyTracker>(std::move(t));
}

}  // namespace spare::region::internal
