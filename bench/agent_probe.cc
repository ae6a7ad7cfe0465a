// agent_probe — how quickly an agent's loop answers, seen from a client
// that asks on a fixed schedule, as a heartbeat would.
//
// Opens one connection to DIR/agent.sock and sends a Status request every
// --interval-ms (absolute schedule), waiting for each answer before the
// next send (at most one request in flight). Per request it records
//   rtt            send → answer received
//   from_schedule  scheduled send time → answer received (includes the time
//                  a slow answer delayed this send; what a heartbeat with a
//                  timeout would see, free of coordinated omission)
// and prints p50/p90/p99/p99.9/max of both, one human line and one JSON
// line ("agent_probe: {...}") on stdout.
//
//   agent_probe --agent=DIR [--count=5000] [--interval-ms=2]
//               [--timeout-ms=5000] [--out=PATH]
// --agent defaults to $SPARE_AGENT. Exit 0 on success, 2 on a bad flag,
// 1 when the agent cannot be reached, answers with an error, or does not
// answer within --timeout-ms.
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ipc/wire.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string agent;
  long count = 5000;
  double interval_ms = 2;
  long timeout_ms = 5000;
  std::string out;
};

[[noreturn]] void Usage(const char* arg, const char* why) {
  std::fprintf(stderr,
               "agent_probe: bad flag \"%s\": %s\n"
               "usage: agent_probe --agent=DIR [--count=N] [--interval-ms=MS] "
               "[--timeout-ms=MS] [--out=PATH]\n",
               arg, why);
  std::exit(2);
}

[[noreturn]] void Die(const std::string& what, const spare::Status& st) {
  std::fprintf(stderr, "agent_probe: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

// "--name=<number in [lo, hi]>" into *v; false if arg is not --name=.
bool NumFlag(const char* arg, const char* name, double lo, double hi, double* v) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(arg + n + 1, &end);
  if (errno != 0 || end == arg + n + 1 || *end != '\0') Usage(arg, "expected a number");
  if (!(x >= lo && x <= hi)) Usage(arg, "out of range");
  *v = x;
  return true;
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  if (const char* env = std::getenv("SPARE_AGENT")) f.agent = env;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    double v = 0;
    if (std::strncmp(a, "--agent=", 8) == 0) {
      f.agent = a + 8;
    } else if (std::strncmp(a, "--out=", 6) == 0) {
      f.out = a + 6;
    } else if (NumFlag(a, "--count", 1, 10'000'000, &v)) {
      f.count = static_cast<long>(v);
    } else if (NumFlag(a, "--interval-ms", 0, 60'000, &v)) {
      f.interval_ms = v;
    } else if (NumFlag(a, "--timeout-ms", 1, 600'000, &v)) {
      f.timeout_ms = static_cast<long>(v);
    } else {
      Usage(a, "unknown flag");
    }
  }
  if (f.agent.empty()) Usage("--agent", "no agent directory (pass --agent=DIR or set SPARE_AGENT)");
  return f;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  double k = static_cast<double>(sorted.size() - 1) * p / 100.0;
  size_t lo = static_cast<size_t>(k);
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (k - static_cast<double>(lo));
}

// {"n":..,"p50":..,...} of v (sorted in place); *human gets "p50/p99/max".
std::string Summary(std::vector<double>& v, std::string* human) {
  std::sort(v.begin(), v.end());
  double mean = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(std::max<size_t>(v.size(), 1));
  const double mx = v.empty() ? 0 : v.back();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"n\": %zu, \"min\": %.4f, \"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, "
                "\"p999\": %.4f, \"max\": %.4f, \"mean\": %.4f}",
                v.size(), v.empty() ? 0 : v.front(), Percentile(v, 50), Percentile(v, 90),
                Percentile(v, 99), Percentile(v, 99.9), mx, mean);
  char h[128];
  std::snprintf(h, sizeof h, "p50 %.3f p99 %.3f max %.3f ms", Percentile(v, 50), Percentile(v, 99),
                mx);
  *human = h;
  return buf;
}

// Waits for the answer to one Status request; returns when it came.
Clock::time_point AwaitReply(int sock, Clock::time_point sent, long timeout_ms, long i) {
  const auto deadline = sent + std::chrono::milliseconds(timeout_ms);
  for (int guard = 0; guard < 1'000'000; ++guard) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{sock, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) Die("poll", spare::Status::FromErrno("poll", errno));
    if (n <= 0) continue;
    auto reply = spare::ipc::Receive(sock, /*dont_wait=*/true);
    const auto at = Clock::now();
    if (!reply.ok()) Die("request " + std::to_string(i), reply.status());
    if (!reply->has_value()) continue;
    spare::Status st = spare::ipc::StatusOf(**reply);
    if (!st.ok()) Die("Status answer " + std::to_string(i), st);
    return at;
  }
  Die("request " + std::to_string(i),
      spare::Status(spare::Code::kUnavailable,
                    "no answer within --timeout-ms=" + std::to_string(timeout_ms)));
}

}  // namespace

int main(int argc, char** argv) {
  const Flags f = ParseFlags(argc, argv);
  const std::string path = f.agent + "/agent.sock";
  auto sock = spare::ipc::Connect(path);
  if (!sock.ok()) Die("connecting to " + path, sock.status());

  spare::ipc::Message req;
  req.type = spare::ipc::MsgType::kStatus;
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, std::milli>(f.interval_ms));
  std::vector<double> rtt, sched;
  rtt.reserve(static_cast<size_t>(f.count));
  sched.reserve(static_cast<size_t>(f.count));
  long late = 0;  // sends that started after their scheduled time + interval
  const auto t0 = Clock::now();
  for (long i = 0; i < f.count; ++i) {
    const auto due = t0 + i * interval;
    if (Clock::now() < due) std::this_thread::sleep_until(due);
    const auto sent = Clock::now();
    if (sent > due + interval) ++late;
    spare::Status st = spare::ipc::Send(sock->get(), req);
    if (!st.ok()) Die("sending Status " + std::to_string(i), st);
    const auto got = AwaitReply(sock->get(), sent, f.timeout_ms, i);
    rtt.push_back(Ms(got - sent));
    sched.push_back(Ms(got - due));
  }
  const double elapsed_s = Ms(Clock::now() - t0) / 1000;
  long over5 = 0, over10 = 0;
  for (double x : rtt) {
    over5 += x > 5;
    over10 += x > 10;
  }
  std::string h_rtt, h_sched;
  const std::string j_rtt = Summary(rtt, &h_rtt);
  const std::string j_sched = Summary(sched, &h_sched);
  std::string json = "{\"count\": " + std::to_string(f.count) +
                     ", \"interval_ms\": " + std::to_string(f.interval_ms) +
                     ", \"elapsed_s\": " + std::to_string(elapsed_s) +
                     ", \"late_sends\": " + std::to_string(late) +
                     ", \"rtt_over_5ms\": " + std::to_string(over5) +
                     ", \"rtt_over_10ms\": " + std::to_string(over10) + ", \"rtt_ms\": " + j_rtt +
                     ", \"from_schedule_ms\": " + j_sched + "}";
  std::printf(
      "agent_probe: %ld Status requests every %.3g ms in %.2f s: rtt %s; "
      "from schedule %s; %ld over 5 ms, %ld late sends\n",
      f.count, f.interval_ms, elapsed_s, h_rtt.c_str(), h_sched.c_str(), over5, late);
  std::printf("agent_probe: %s\n", json.c_str());
  std::fflush(stdout);
  if (!f.out.empty()) {
    FILE* out = std::fopen(f.out.c_str(), "w");
    if (!out) Die("--out", spare::Status::FromErrno("fopen " + f.out, errno));
    std::fprintf(out, "%s\n", json.c_str());
    if (std::fclose(out) != 0) Die("--out", spare::Status::FromErrno("fclose " + f.out, errno));
  }
  return 0;
}
