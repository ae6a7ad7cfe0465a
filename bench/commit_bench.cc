// commit_bench — cost of Runtime::commit() vs the number of dirty pages.
//
// A protected program: run it under an agent (bench/commit_bench.py does).
// It maps one 1 GiB region; each iteration writes one byte into each of N
// pages (untimed), then times rt.commit() alone (manual timing). N covers
// 1, 16, 256, 2560 (= 10 MB) and 10240 pages; pages are either one
// contiguous run or every other page (no two dirty pages adjacent, so the
// tracker returns N ranges and staging holds N descriptors).
//
// Collecting dirty pages walks the region's page tables, so its cost also
// depends on how much of the region is resident, not only on N. Two states,
// run in this order (registration order; do not shuffle):
//   resident:0  only the pages being dirtied are resident: the same N pages
//               are written every iteration, the rest of the region is
//               never touched.
//   resident:1  the whole 1 GiB region is resident (every page written and
//               committed once before the first such run); the dirty pages
//               rotate through the region.
//
// Two modes:
//   pipelined:0  before each timed commit, wait until the previous epoch is
//                durable (untimed), so staging is never the bottleneck: the
//                pure cost of collect + copy + signal.
//   pipelined:1  no waiting (only a non-blocking poll() between commits, as
//                an event loop would): commit() may merge or block on
//                back-pressure, and that time counts.
//
// Counters per run (Google Benchmark repeats runs, --benchmark_repetitions):
//   commit_us_p50/p99/max   per-commit latency inside the run
//   ms_per_10MB             mean commit time scaled to 2560 pages
//   pages_per_commit        pages the runtime reports committed per commit
//                           (sanity: must be >= N when not pipelined)
//   deferred, bp_waits      merged commits / back-pressure waits per commit
//   dropped                 private copies of long-clean pages dropped per
//                           commit ($SPARE_DROP_CLEAN_MS; inside the timed
//                           commit)
//   helper_share            fraction of the committed bytes the copy helper
//                           thread copied ($SPARE_COPY_THREADS; 0 when off)
//
// Flags besides Google Benchmark's:
//   --iterations_scale=F    multiply the fixed iteration counts (default 1)
//   --unprotected           use Runtime::Unprotected() (harness smoke test
//                           only: commit() does nothing there)
// The tracker is chosen at attach by $SPARE_TRACKER (uffd | mprotect).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "spare/runtime.h"

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kRegionBytes = size_t{1} << 30;
constexpr size_t kPagesPer10MB = 2560;  // 10 MiB / 4 KiB
constexpr int kWaitTimeoutMs = 60'000;

spare::Runtime* g_rt = nullptr;
spare::Region* g_region = nullptr;
size_t g_cursor = 0;  // next page to dirty; rotates through the region
uint8_t g_value = 0;
bool g_prefaulted = false;  // whole region written and committed once

[[noreturn]] void Die(const char* what, const spare::Status& st) {
  std::fprintf(stderr, "commit_bench: %s: %s\n", what, st.ToString().c_str());
  std::fflush(stderr);
  // Exit 0 on purpose: a non-zero exit is a crash to the agent, which would
  // restart the bench; the driver sees the missing output and the log.
  std::_Exit(0);
}

// Writes one byte into each of `n` pages, `stride` pages apart, starting
// at the cursor (rotate) or at page 0 (the same pages every time).
void DirtyPages(size_t n, size_t stride, bool rotate) {
  const size_t pages = g_region->size() / kPage;
  if (!rotate || g_cursor + n * stride > pages) g_cursor = 0;
  volatile uint8_t* base = reinterpret_cast<volatile uint8_t*>(g_region->data());
  ++g_value;
  for (size_t i = 0; i < n; ++i) base[(g_cursor + i * stride) * kPage] = g_value;
  if (rotate) g_cursor += n * stride;
}

void Drain() {
  spare::Status st = g_rt->wait_durable(g_rt->epoch(), kWaitTimeoutMs);
  if (!st.ok()) Die("wait_durable", st);
}

// Writes every page of the region once, committing every 32 MiB (within
// the agent's default staging area of 8 x 16 MiB) and waiting for each.
void Prefault() {
  constexpr size_t kChunkPages = (32u << 20) / kPage;
  const size_t pages = g_region->size() / kPage;
  volatile uint8_t* base = reinterpret_cast<volatile uint8_t*>(g_region->data());
  for (size_t p = 0; p < pages; p += kChunkPages) {
    for (size_t i = p; i < std::min(pages, p + kChunkPages); ++i) base[i * kPage] = 1;
    spare::Result<uint64_t> e = g_rt->commit();
    if (!e.ok()) Die("prefault commit", e.status());
    Drain();
  }
  g_prefaulted = true;
  g_cursor = 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double k = (v.size() - 1) * p / 100.0;
  size_t lo = static_cast<size_t>(k);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (k - lo);
}

void BM_Commit(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const bool pipelined = state.range(1) != 0;
  const size_t stride = state.range(2) != 0 ? 2 : 1;
  const bool resident = state.range(3) != 0;
  if (!resident && g_prefaulted) {
    state.SkipWithError("resident:0 must run before any resident:1 run (do not shuffle)");
    return;
  }
  if (resident && !g_prefaulted) Prefault();

  std::vector<double> us;
  us.reserve(static_cast<size_t>(state.max_iterations));
  Drain();
  const spare::RuntimeStats s0 = g_rt->stats();
  for (auto _ : state) {
    spare::Status st = pipelined ? g_rt->poll() : g_rt->wait_durable(g_rt->epoch(), kWaitTimeoutMs);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      break;
    }
    DirtyPages(n, stride, /*rotate=*/resident);
    auto t0 = std::chrono::steady_clock::now();
    spare::Result<uint64_t> epoch = g_rt->commit();
    auto t1 = std::chrono::steady_clock::now();
    if (!epoch.ok()) {
      state.SkipWithError(epoch.status().ToString().c_str());
      break;
    }
    double secs = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(secs);
    us.push_back(secs * 1e6);
  }
  Drain();  // the next run starts with nothing in flight
  const spare::RuntimeStats s1 = g_rt->stats();

  const double iters = static_cast<double>(std::max<size_t>(us.size(), 1));
  double mean_us = 0;
  for (double x : us) mean_us += x;
  mean_us /= iters;
  state.counters["pages"] = static_cast<double>(n);
  state.counters["commit_us_p50"] = Percentile(us, 50);
  state.counters["commit_us_p99"] = Percentile(us, 99);
  state.counters["commit_us_max"] = us.empty() ? 0 : *std::max_element(us.begin(), us.end());
  state.counters["ms_per_10MB"] = mean_us / 1000.0 * kPagesPer10MB / static_cast<double>(n);
  state.counters["pages_per_commit"] =
      static_cast<double>(s1.pages_committed - s0.pages_committed) / iters;
  state.counters["deferred"] = static_cast<double>(s1.deferred_commits - s0.deferred_commits) / iters;
  state.counters["bp_waits"] =
      static_cast<double>(s1.backpressure_waits - s0.backpressure_waits) / iters;
  const uint64_t committed = s1.bytes_committed - s0.bytes_committed;
  state.counters["helper_share"] =
      committed ? static_cast<double>(s1.bytes_copied_by_helpers - s0.bytes_copied_by_helpers) /
                      static_cast<double>(committed)
                : 0.0;
  state.counters["dropped"] = static_cast<double>(s1.pages_dropped - s0.pages_dropped) / iters;
  state.SetBytesProcessed(static_cast<int64_t>(us.size() * n * kPage));
}

// The floor any copy-based commit pays: memcpy of N pages from a resident
// buffer into the next N pages of a 128 MiB ring (the size of the agent's
// default staging area, 8 x 16 MiB), measured in the same process and run.
void BM_CopyFloor(benchmark::State& state) {
  constexpr size_t kRing = size_t{128} << 20;
  const size_t bytes = static_cast<size_t>(state.range(0)) * kPage;
  static std::vector<uint8_t> src(10240 * kPage, 1), ring(kRing, 2);
  size_t at = 0;
  std::vector<double> us;
  for (auto _ : state) {
    ++src[0];
    if (at + bytes > kRing) at = 0;
    auto t0 = std::chrono::steady_clock::now();
    std::memcpy(ring.data() + at, src.data(), bytes);
    benchmark::ClobberMemory();
    auto t1 = std::chrono::steady_clock::now();
    at += bytes;
    double secs = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(secs);
    us.push_back(secs * 1e6);
  }
  double mean_us = 0;
  for (double x : us) mean_us += x;
  mean_us /= static_cast<double>(std::max<size_t>(us.size(), 1));
  state.counters["pages"] = static_cast<double>(state.range(0));
  state.counters["ms_per_10MB"] = mean_us / 1000.0 * kPagesPer10MB / static_cast<double>(state.range(0));
  state.SetBytesProcessed(static_cast<int64_t>(us.size() * bytes));
}

// Fixed iteration counts keep wall time bounded: dirtying (untimed) costs
// far more than the commit for large N.
int64_t IterationsFor(size_t pages, double scale) {
  int64_t base = pages <= 16 ? 200 : pages <= 256 ? 100 : pages <= 2560 ? 40 : 15;
  return std::max<int64_t>(5, static_cast<int64_t>(base * scale));
}

// resident:0 first (see the top of the file). Strided pages only when
// waiting: the pattern changes what one commit does, not the pipelining.
void Register(double scale) {
  for (size_t pages : {2560, 10240}) {
    benchmark::RegisterBenchmark("BM_CopyFloor", BM_CopyFloor)
        ->Arg(static_cast<int64_t>(pages))
        ->ArgName("pages")
        ->Iterations(IterationsFor(pages, scale))
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  struct Variant {
    int64_t pipelined, strided;
  };
  for (int64_t resident : {0, 1}) {
    for (Variant v : {Variant{0, 0}, Variant{1, 0}, Variant{0, 1}}) {
      for (size_t pages : {1, 16, 256, 2560, 10240}) {
        benchmark::RegisterBenchmark("BM_Commit", BM_Commit)
            ->Args({static_cast<int64_t>(pages), v.pipelined, v.strided, resident})
            ->ArgNames({"pages", "pipelined", "strided", "resident"})
            ->Iterations(IterationsFor(pages, scale))
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  double scale = 1.0;
  bool unprotected = false;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--iterations_scale=", 19) == 0) {
      scale = std::atof(argv[i] + 19);
    } else if (std::strcmp(argv[i], "--unprotected") == 0) {
      unprotected = true;
    } else {
      rest.push_back(argv[i]);
    }
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 2;

  spare::Result<spare::Runtime> rt =
      unprotected ? spare::Runtime::Unprotected() : spare::Runtime::Attach();
  if (!rt.ok()) Die("attach", rt.status());
  if (rt->resumed()) {
    // A previous run of this bench crashed; its figures are gone. Do not
    // measure a restarted process (its region holds old private state).
    std::fprintf(stderr, "commit_bench: resumed after a crash; refusing to measure\n");
    return 0;
  }
  spare::Result<spare::Region*> region = rt->region("bench", kRegionBytes);
  if (!region.ok()) Die("region", region.status());
  g_rt = &rt.value();
  g_region = region.value();

  const spare::RuntimeStats stats = g_rt->stats();
  benchmark::AddCustomContext("spare_protected", g_rt->protected_mode() ? "true" : "false");
  benchmark::AddCustomContext("spare_tracker", stats.tracker.empty() ? "none" : stats.tracker);
  benchmark::AddCustomContext("spare_region_bytes", std::to_string(kRegionBytes));
  benchmark::AddCustomContext("spare_copy_helpers", std::to_string(stats.copy_helpers));
  const char* tls = std::getenv("UCX_TLS");
  benchmark::AddCustomContext("UCX_TLS", tls ? tls : "(unset)");

  Register(scale);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  Drain();
  return 0;
}
