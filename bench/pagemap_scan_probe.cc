// pagemap_scan_probe — what one PAGEMAP_SCAN costs over a fully resident
// 1 GiB MAP_PRIVATE memfd mapping under async uffd-wp, for two sets of scan
// masks that report the same pages:
//
//   lazy   category_mask = WRITTEN|FILE|PFNZERO, inverted = FILE|PFNZERO,
//          anyof = PRESENT|SWAPPED  (what src/region/uffd_tracker.cc uses
//          in its default lazy mode)
//   plain  category_mask = WRITTEN, return_mask = WRITTEN  (the eager mode's
//          masks)
//
// Each round writes `dirty` pages, then scans (and re-protects) the whole
// range; the median of 21 rounds is printed per variant. Not part of spare:
// a diagnostic for commit_bench's whole-region-resident case. Run directly:
//   build-bench/bin/pagemap_scan_probe [dirty_pages=1]
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "region/uffd_compat.h"

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kLen = size_t{1} << 30;

[[noreturn]] void Die(const char* what) {
  std::perror(what);
  std::exit(1);
}

struct Masks {
  const char* name;
  __u64 mask, inverted, anyof;
};

// Scans [base, base+kLen), re-protecting what it reports; returns pages reported.
size_t Scan(int pagemap, char* base, const Masks& m, std::vector<page_region>& vec) {
  pm_scan_arg arg{};
  arg.size = sizeof arg;
  arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
  arg.start = reinterpret_cast<__u64>(base);
  arg.end = arg.start + kLen;
  arg.vec = reinterpret_cast<__u64>(vec.data());
  arg.vec_len = vec.size();
  arg.category_mask = m.mask;
  arg.category_inverted = m.inverted;
  arg.category_anyof_mask = m.anyof;
  arg.return_mask = PAGE_IS_WRITTEN;
  size_t pages = 0;
  while (arg.start < arg.end) {
    int n = ioctl(pagemap, PAGEMAP_SCAN, &arg);
    if (n < 0) Die("PAGEMAP_SCAN");
    for (int i = 0; i < n; ++i) pages += (vec[i].end - vec[i].start) / kPage;
    arg.start = arg.walk_end;
  }
  return pages;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t dirty = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1;
  int memfd = memfd_create("probe", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, kLen) != 0) Die("memfd");
  auto* base = static_cast<char*>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd, 0));
  if (base == MAP_FAILED) Die("mmap");
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  if (uffd < 0) Die("userfaultfd");
  uffdio_api api{UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0};
  if (ioctl(uffd, UFFDIO_API, &api) != 0) Die("UFFDIO_API");
  uffdio_register reg{};
  reg.range = {reinterpret_cast<__u64>(base), kLen};
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) Die("UFFDIO_REGISTER");
  int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (pagemap < 0) Die("pagemap");

  for (size_t p = 0; p < kLen / kPage; ++p) base[p * kPage] = 1;  // all resident
  std::vector<page_region> vec(2048);
  const Masks variants[] = {
      {"lazy ", PAGE_IS_WRITTEN | PAGE_IS_FILE | PAGE_IS_PFNZERO, PAGE_IS_FILE | PAGE_IS_PFNZERO,
       PAGE_IS_PRESENT | PAGE_IS_SWAPPED},
      {"plain", PAGE_IS_WRITTEN, 0, 0},
  };
  std::printf("1 GiB MAP_PRIVATE memfd, every page resident, %zu dirty page(s) per scan\n", dirty);
  for (int pass = 0; pass < 2; ++pass) {  // twice, to see the spread
    for (const Masks& m : variants) {
      Scan(pagemap, base, m, vec);  // start clean
      std::vector<double> us;
      for (int round = 0; round < 21; ++round) {
        for (size_t i = 0; i < dirty; ++i) base[((round * 7919 + i) % (kLen / kPage)) * kPage] += 1;
        auto t0 = std::chrono::steady_clock::now();
        size_t got = Scan(pagemap, base, m, vec);
        auto t1 = std::chrono::steady_clock::now();
        if (got != dirty) {
          std::fprintf(stderr, "%s: reported %zu pages, %zu written\n", m.name, got, dirty);
          return 1;
        }
        us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
      std::sort(us.begin(), us.end());
      std::printf("  %s masks: median %8.1f us  (min %8.1f, max %8.1f)\n", m.name, us[10], us[0],
                  us[20]);
    }
  }
  return 0;
}
