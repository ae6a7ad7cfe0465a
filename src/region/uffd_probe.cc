// The uffd tracker's self-test: whether this kernel runs the mechanism
// uffd_tracker.cc relies on, in which mode.
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "region/mapping.h"
#include "region/tracker_internal.h"

namespace spare::region::internal {
namespace {

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
  // Without the chunk guard: this checks the kernel mechanism only.
  SPARE_ASSIGN_OR_RETURN(auto tracker, NewUffdTracker(mode, ChunkGuardPolicy{.enabled = false}));
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

}  // namespace spare::region::internal
