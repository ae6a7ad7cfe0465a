// region_bench — how long Add() and Collect() take, per tracker.
//
// Not a test: prints medians for the numbers restart and commit latency
// depend on. Usage: region_bench [uffd|uffd-eager|mprotect]...  (default: all)
//   region_bench --resident [uffd|mprotect]...
// runs only the resident-region cases (docs/BENCHMARKS.md, "Collect on a
// resident region"): 1, 100 and 1000 random pages written per collection
// of a fully resident 1 GiB and 4 GiB region. "uffd" is the tracker
// DirtyTracker::Create would pick, so $SPARE_UFFD_GUARD applies.
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
  // kUffdLazy: the probed mode (lazy on every kernel this runs on) and
  // the chunk guard policy from the environment.
  auto t = v == Variant::kMprotect   ? internal::NewMprotectTracker()
           : v == Variant::kUffdLazy ? internal::NewUffdTracker()
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

double P99(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, v.size() * 99 / 100)];
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

// A `len` region, every page written before Add() (fully resident, as a
// long-running instance's region is). Each round writes one byte into each
// of `dirty` random pages (timed: includes any write fault), then collects
// (timed). kWarmup rounds first, so adaptive state settles (their mean
// Collect time is printed too); then `rounds` timed ones.
void BenchResident(Variant v, size_t len, size_t dirty, int rounds) {
  constexpr int kWarmup = 300;
  auto t = NewTracker(v);
  Region r;
  MapRegion("resident" + std::to_string(len) + "-" + std::to_string(dirty), len, &r);
  auto* bytes = static_cast<volatile char*>(r.base);
  const size_t pages = len / kPageSize;
  for (size_t p = 0; p < pages; ++p) bytes[p * kPageSize] = 1;
  Check(t->Add(r.base, r.len));
  uint64_t x = 0x9E3779B97F4A7C15ULL + dirty;
  std::vector<size_t> picked;
  std::vector<PageRange> out;
  std::vector<double> write, collect, total;
  double warmup_us = 0;
  for (int i = 0; i < kWarmup + rounds; ++i) {
    picked.clear();
    for (size_t k = 0; k < dirty; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      picked.push_back(x % pages);
    }
    auto t0 = Clock::now();
    for (size_t p : picked) bytes[p * kPageSize + 8] = static_cast<char>(i);
    auto t1 = Clock::now();
    out.clear();
    Check(t->Collect(r.base, r.len, &out));
    auto t2 = Clock::now();
    std::sort(picked.begin(), picked.end());
    const size_t distinct = std::unique(picked.begin(), picked.end()) - picked.begin();
    size_t got = 0;
    for (const PageRange& pr : out) got += pr.bytes() / kPageSize;
    if (got != distinct) {
      std::fprintf(stderr, "collected %zu pages, wrote %zu\n", got, distinct);
      std::exit(1);
    }
    if (i < kWarmup) {
      warmup_us += Us(t2 - t1) / kWarmup;
      continue;
    }
    write.push_back(Us(t1 - t0));
    collect.push_back(Us(t2 - t1));
    total.push_back(Us(t2 - t0));
  }
  std::printf(
      "  resident %4zu MiB, %4zu random pages/round: Collect p50 %8.1f p99 %8.1f us; "
      "writes p50 %8.1f p99 %8.1f us; writes+Collect p50 %8.1f p99 %8.1f us (%d rounds; "
      "warm-up Collect mean %.1f us)\n",
      len / kMiB, dirty, Median(collect), P99(collect), Median(write), P99(write), Median(total),
      P99(total), rounds, warmup_us);
  std::fflush(stdout);
  Check(t->Remove(r.base, r.len));
}

void BenchResidentAll(Variant v, const char* label) {
  std::printf("%s\n", label);
  for (size_t len : {1024 * kMiB, 4096 * kMiB}) {
    BenchResident(v, len, 1, 400);
    BenchResident(v, len, 100, 200);
    BenchResident(v, len, 1000, 100);
  }
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
  const bool resident = !which.empty() && which[0] == "--resident";
  if (resident) which.erase(which.begin());
  if (which.empty()) which = {"uffd", "uffd-eager", "mprotect"};
  if (!spare::region::UffdTrackerSupported()) std::printf("(uffd-wp not supported here)\n");
  if (resident) {
    for (const std::string& w : which) {
      if (w == "uffd") spare::region::BenchResidentAll(Variant::kUffdLazy, "uffd-wp");
      if (w == "mprotect") spare::region::BenchResidentAll(Variant::kMprotect, "mprotect");
    }
    return 0;
  }
  for (const std::string& w : which) {
    if (w == "uffd") spare::region::Bench(Variant::kUffdLazy, "uffd-wp (lazy, the default)");
    if (w == "uffd-eager") spare::region::Bench(Variant::kUffdEager, "uffd-wp (eager)");
    if (w == "mprotect") spare::region::Bench(Variant::kMprotect, "mprotect");
  }
}
