// region_bench — how long Add() and Collect() take, per tracker.
//
// Not a test: prints medians for the numbers restart and commit latency
// depend on. Usage: region_bench [uffd|uffd-eager|mprotect]...  (default: all)
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "region/mapping.h"
#include "region/tracker.h"
#include "region/tracker_internal.h"

namespace spare::region {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMiB = 1 << 20;

enum class Variant { kUffdLazy, kUffdEager, kMprotect };

std::unique_ptr<DirtyTracker> NewTracker(Variant v) {
  auto t = v == Variant::kMprotect   ? internal::NewMprotectTracker()
           : v == Variant::kUffdLazy ? internal::NewUffdTracker(internal::UffdMode::kLazy)
                                     : internal::NewUffdTracker(internal::UffdMode::kEager);
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*t);
}

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Region {
  UniqueFd fd;
  void* base = nullptr;
  size_t len = 0;
  ~Region() {
    if (base) ::munmap(base, len);
  }
};

void Check(const Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    std::exit(1);
  }
}

// A fresh memfd of `len` bytes mapped MAP_PRIVATE at its derived address.
void MapRegion(const std::string& name, size_t len, Region* r) {
  auto fd = CreateMemfd(name, len);
  Check(fd.status());
  auto p = MapPrivateFixed(fd->get(), DeriveAddress("region_bench", name, len), len);
  Check(p.status());
  r->fd = std::move(*fd);
  r->base = *p;
  r->len = len;
}

void BenchAdd(Variant v, size_t len) {
  std::vector<double> add, remove;
  for (int i = 0; i < 5; ++i) {
    auto t = NewTracker(v);
    Region r;
    MapRegion("add" + std::to_string(len) + "-" + std::to_string(i), len, &r);
    auto t0 = Clock::now();
    Check(t->Add(r.base, r.len));
    auto t1 = Clock::now();
    Check(t->Remove(r.base, r.len));
    auto t2 = Clock::now();
    add.push_back(Us(t1 - t0));
    remove.push_back(Us(t2 - t1));
  }
  std::printf("  Add     %4zu MiB fresh memfd MAP_PRIVATE : %8.1f us  (Remove %.1f us)\n",
              len / kMiB, Median(add), Median(remove));
}

// Collect() on a 1 GiB region: `dirty` pages written `stride` pages apart
// before each collection (median of 20 after a first round).
void BenchCollect(Variant v, size_t dirty, size_t stride) {
  const size_t len = 1024 * kMiB;
  auto t = NewTracker(v);
  Region r;
  MapRegion("collect" + std::to_string(stride), len, &r);
  Check(t->Add(r.base, r.len));
  auto* bytes = static_cast<volatile char*>(r.base);
  std::vector<double> first_write, rewrite, collect;
  std::vector<PageRange> out;
  for (int i = 0; i < 21; ++i) {
    auto t0 = Clock::now();
    for (size_t p = 0; p < dirty; ++p) bytes[p * stride * kPageSize] = static_cast<char>(i);
    (i == 0 ? first_write : rewrite).push_back(Us(Clock::now() - t0) / std::max<size_t>(dirty, 1));
    out.clear();
    auto t1 = Clock::now();
    Check(t->Collect(r.base, r.len, &out));
    if (i > 0) collect.push_back(Us(Clock::now() - t1));
    size_t pages = 0;
    for (const PageRange& pr : out) pages += pr.bytes() / kPageSize;
    if (pages != dirty) {
      std::fprintf(stderr, "collected %zu pages, wrote %zu\n", pages, dirty);
      std::exit(1);
    }
  }
  const char* shape = dirty == 0 ? "" : stride == 1 ? "contiguous" : "scattered";
  std::printf("  Collect 1 GiB, %4zu dirty pages %-10s: %8.1f us", dirty, shape, Median(collect));
  if (dirty) {
    std::printf("  (write fault: first %.2f us/page, again %.2f us/page)", first_write[0],
                Median(rewrite));
    // Same region with nothing dirty, now that pages across it were touched.
    std::vector<double> clean;
    for (int i = 0; i < 21; ++i) {
      out.clear();
      auto t1 = Clock::now();
      Check(t->Collect(r.base, r.len, &out));
      clean.push_back(Us(Clock::now() - t1));
    }
    std::printf("; then 0 dirty: %.1f us", Median(clean));
  }
  std::printf("\n");
  Check(t->Remove(r.base, r.len));
}

void Bench(Variant v, const char* label) {
  std::printf("%s\n", label);
  BenchAdd(v, 64 * kMiB);
  BenchAdd(v, 4096 * kMiB);
  BenchCollect(v, 0, 1);
  BenchCollect(v, 2560, 1);
  BenchCollect(v, 2560, 100);
}

}  // namespace
}  // namespace spare::region

int main(int argc, char** argv) {
  using spare::region::Variant;
  std::vector<std::string> which(argv + 1, argv + argc);
  if (which.empty()) which = {"uffd", "uffd-eager", "mprotect"};
  if (!spare::region::UffdTrackerSupported()) std::printf("(uffd-wp not supported here)\n");
  for (const std::string& w : which) {
    if (w == "uffd") spare::region::Bench(Variant::kUffdLazy, "uffd-wp (lazy, the default)");
    if (w == "uffd-eager") spare::region::Bench(Variant::kUffdEager, "uffd-wp (eager)");
    if (w == "mprotect") spare::region::Bench(Variant::kMprotect, "mprotect");
  }
}
