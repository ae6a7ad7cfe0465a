// commit_load — a protected program that commits at a steady rate, to load
// an agent while something else measures it (bench/agent_loop_bench.py).
//
// Run it under an agent: `spare run --id ID --policy local -- commit_load ...`.
// It maps one region, then every epoch period (epoch size / rate) writes
// one word into each of `epoch size / 4 KiB` distinct pages picked at
// random across the region and calls commit(). The committed bytes are
// whole pages, so the agent applies `epoch size` bytes per epoch, as up to
// that many single-page entries (random pages are rarely adjacent).
// Pacing follows the clock (absolute deadlines); when a tick is more than
// one period late (commit blocked on back-pressure) the schedule restarts
// from now and the ticks skipped are counted, so the rate is never caught
// up in a burst. Between ticks it waits on rt.fd() and calls poll(), as an
// event loop would. At the end it waits until the last epoch is durable.
//
// Flags (all optional):
//   --region-mib=N     region size (default 1024)
//   --rate-mib=R       target commit rate in MiB/s (default 100)
//   --epoch-mib=E      bytes per epoch in MiB, may be fractional, at most a
//                      quarter of the region (default 4)
//   --duration-s=S     how long to commit (default 10)
//   --seed=N           page picker seed (default 1)
//   --out=PATH         also write the JSON summary there
// Prints one human line and one JSON line ("commit_load: {...}") on stdout
// (under an agent that is DIR/instances/ID/log). Exit 0 on success; 2 on a
// bad flag; 1 when attaching or committing fails (pass --max-restarts 0 to
// `spare run` so a failure is not restarted).
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "spare/runtime.h"

namespace {

constexpr size_t kPage = 4096;
constexpr int kDrainTimeoutMs = 60'000;

struct Flags {
  double region_mib = 1024;
  double rate_mib = 100;
  double epoch_mib = 4;
  double duration_s = 10;
  uint64_t seed = 1;
  std::string out;
};

[[noreturn]] void Die(const char* what, const spare::Status& st) {
  std::fprintf(stderr, "commit_load: %s: %s\n", what, st.ToString().c_str());
  std::fflush(stderr);
  std::exit(1);
}

[[noreturn]] void Usage(const char* arg, const char* why) {
  std::fprintf(stderr,
               "commit_load: bad flag \"%s\": %s\n"
               "flags: --region-mib=N --rate-mib=R --epoch-mib=E --duration-s=S --seed=N "
               "--out=PATH\n",
               arg, why);
  std::exit(2);
}

// Parses "--name=<positive number>" into *v; false if arg is not --name=.
bool NumFlag(const char* arg, const char* name, double* v) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(arg + n + 1, &end);
  if (errno != 0 || end == arg + n + 1 || *end != '\0' || !(x > 0))
    Usage(arg, "expected a positive number");
  *v = x;
  return true;
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    double seed = 0;
    if (NumFlag(a, "--region-mib", &f.region_mib) || NumFlag(a, "--rate-mib", &f.rate_mib) ||
        NumFlag(a, "--epoch-mib", &f.epoch_mib) || NumFlag(a, "--duration-s", &f.duration_s))
      continue;
    if (NumFlag(a, "--seed", &seed)) {
      f.seed = static_cast<uint64_t>(seed);
      continue;
    }
    if (std::strncmp(a, "--out=", 6) == 0 && a[6] != '\0') {
      f.out = a + 6;
      continue;
    }
    Usage(a, "unknown flag");
  }
  if (f.epoch_mib * 4 > f.region_mib)
    Usage("--epoch-mib", "an epoch may cover at most a quarter of the region");
  if (f.duration_s > 3600) Usage("--duration-s", "at most 3600");
  if (f.epoch_mib * (1 << 20) < kPage) Usage("--epoch-mib", "at least one page (4 KiB)");
  return f;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Waits until `deadline` (steady clock seconds), handling agent messages.
void WaitUntil(spare::Runtime& rt, double deadline) {
  for (int guard = 0; guard < 100'000; ++guard) {
    double left = deadline - Now();
    if (left <= 0) return;
    timespec ts{static_cast<time_t>(left),
                static_cast<long>((left - static_cast<time_t>(left)) * 1e9)};
    pollfd p{rt.fd(), POLLIN, 0};
    int n = ::ppoll(&p, 1, &ts, nullptr);
    if (n < 0 && errno != EINTR) Die("ppoll", spare::Status::FromErrno("ppoll", errno));
    if (n > 0) {
      spare::Status st = rt.poll();
      if (!st.ok()) Die("poll", st);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  const size_t region_bytes =
      (static_cast<size_t>(f.region_mib * (1 << 20)) + kPage - 1) / kPage * kPage;
  const size_t region_pages = region_bytes / kPage;
  const size_t epoch_pages = static_cast<size_t>(f.epoch_mib * (1 << 20)) / kPage;
  const double period_s = static_cast<double>(epoch_pages * kPage) / (f.rate_mib * (1 << 20));

  spare::Result<spare::Runtime> rt = spare::Runtime::Attach();
  if (!rt.ok()) Die("attach", rt.status());
  if (rt->resumed()) {
    std::fprintf(stderr, "commit_load: resumed after a crash; refusing to measure\n");
    return 1;
  }
  spare::Result<spare::Region*> region = rt->region("load", region_bytes);
  if (!region.ok()) Die("region", region.status());
  auto* base = reinterpret_cast<volatile uint64_t*>((*region)->data());

  std::mt19937_64 rng(f.seed);
  std::uniform_int_distribution<size_t> pick(0, region_pages - 1);
  std::vector<uint32_t> stamp(region_pages, 0);  // epoch that last picked the page
  const spare::RuntimeStats s0 = rt->stats();
  uint64_t ticks = 0, skipped = 0;
  const double t0 = Now();
  const double end = t0 + f.duration_s;
  double sched = t0;  // start of the current schedule
  uint64_t sched_ticks = 0;
  for (uint32_t epoch = 1;; ++epoch) {
    double deadline = sched + static_cast<double>(sched_ticks) * period_s;
    if (deadline >= end) break;
    double now = Now();
    if (now > deadline + period_s) {
      skipped += static_cast<uint64_t>((now - deadline) / period_s);
      sched = now;
      sched_ticks = 0;
    } else {
      WaitUntil(*rt, deadline);
    }
    // Rejection sampling; an epoch is <= 1/4 of the region, so the bound
    // (16 draws per page) is never reached in practice.
    for (size_t i = 0, draws = 0; i < epoch_pages && draws < 16 * epoch_pages; ++draws) {
      size_t p = pick(rng);
      if (stamp[p] == epoch) continue;  // distinct pages within an epoch
      stamp[p] = epoch;
      base[p * (kPage / sizeof(uint64_t))] = epoch;
      ++i;
    }
    spare::Result<uint64_t> e = rt->commit();
    if (!e.ok()) Die("commit", e.status());
    ++ticks;
    ++sched_ticks;
  }
  // The commit window: at least the ticks' share of the schedule (the loop
  // ends right after the last commit, before its period is over).
  const double t_loop = std::max(Now() - t0, static_cast<double>(ticks) * period_s);
  // A merged (deferred) last commit is not handed over yet: commit again.
  for (int i = 0; i < 1000 && rt->commit_deferred(); ++i) {
    WaitUntil(*rt, Now() + 0.005);
    spare::Result<uint64_t> e = rt->commit();
    if (!e.ok()) Die("final commit", e.status());
  }
  spare::Status st = rt->wait_durable(rt->epoch(), kDrainTimeoutMs);
  if (!st.ok()) Die("wait_durable", st);
  const double t_durable = Now() - t0;
  const spare::RuntimeStats s1 = rt->stats();

  const uint64_t bytes = s1.bytes_committed - s0.bytes_committed;
  const uint64_t commits = s1.commits - s0.commits;
  const double mib = static_cast<double>(bytes) / (1 << 20);
  char json[2048];
  std::snprintf(
      json, sizeof json,
      "{\"region_bytes\": %zu, \"epoch_bytes\": %zu, \"target_mib_s\": %.3f, "
      "\"duration_s\": %.3f, \"window_s\": %.3f, \"durable_s\": %.3f, \"ticks\": %" PRIu64
      ", \"ticks_skipped\": %" PRIu64
      ", \"achieved_mib_s\": %.3f, \"durable_mib_s\": %.3f, "
      "\"commits\": %" PRIu64 ", \"deferred_commits\": %" PRIu64
      ", \"backpressure_waits\": %" PRIu64 ", \"pages_committed\": %" PRIu64
      ", \"bytes_committed\": %" PRIu64
      ", \"commit_ms_mean\": %.3f, \"commit_ms_max\": %.3f, \"tracker\": \"%s\", "
      "\"copy_helpers\": %u, \"durable_epoch\": %" PRIu64 "}",
      region_bytes, epoch_pages * kPage, f.rate_mib, f.duration_s, t_loop, t_durable, ticks,
      skipped, mib / t_loop, mib / t_durable, commits, s1.deferred_commits - s0.deferred_commits,
      s1.backpressure_waits - s0.backpressure_waits, s1.pages_committed - s0.pages_committed, bytes,
      commits ? static_cast<double>(s1.commit_ns_total - s0.commit_ns_total) / 1e6 /
                    static_cast<double>(commits)
              : 0.0,
      static_cast<double>(s1.commit_ns_max) / 1e6, s1.tracker.c_str(), s1.copy_helpers,
      rt->durable_epoch());
  std::printf("commit_load: %.1f MiB in %.2f s = %.1f MiB/s (target %.1f), %" PRIu64
              " commits of %zu pages, %" PRIu64 " deferred, %" PRIu64
              " back-pressure waits, %" PRIu64 " ticks skipped, commit max %.2f ms\n",
              mib, t_loop, mib / t_loop, f.rate_mib, commits, epoch_pages,
              s1.deferred_commits - s0.deferred_commits,
              s1.backpressure_waits - s0.backpressure_waits, skipped,
              static_cast<double>(s1.commit_ns_max) / 1e6);
  std::printf("commit_load: %s\n", json);
  std::fflush(stdout);
  if (!f.out.empty()) {
    FILE* out = std::fopen(f.out.c_str(), "w");
    if (!out) Die("--out", spare::Status::FromErrno("fopen " + f.out, errno));
    std::fprintf(out, "%s\n", json);
    if (std::fclose(out) != 0) Die("--out", spare::Status::FromErrno("fclose " + f.out, errno));
  }
  return 0;
}
