#include "cli/demo.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/load_writer.h"
#include "cli/resp_client.h"
#include "cli/subprocess.h"
#include "ipc/body.h"
#include "spare/status.h"

namespace spare::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kBaseKeys = 300;

std::atomic<bool> g_interrupted{false};
void OnInterrupt(int) { g_interrupted = true; }

Status Interrupted() { return Status(Code::kUnavailable, "interrupted"); }

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

Result<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return Status::FromErrno("picking a free port", errno);
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

// SIGKILLs every process whose environment names an agent directory at or
// under `dir` (SPARE_AGENT=dir...): instances and their exit helpers.
void KillInstancesUnder(const std::string& dir) {
  if (dir.empty()) return;
  const std::string marker = "SPARE_AGENT=" + dir;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    int fd = open((entry.path() / "environ").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string env;
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) env.append(buf, static_cast<size_t>(n));
    close(fd);
    for (size_t at = 0; at < env.size(); at = env.find('\0', at) + 1) {
      if (env.compare(at, marker.size(), marker) == 0) {
        const char next = at + marker.size() < env.size() ? env[at + marker.size()] : '\0';
        if (next == '\0' || next == '/') kill(std::stoi(name), SIGKILL);
        break;
      }
      if (env.find('\0', at) == std::string::npos) break;
    }
  }
}

// ---- the demo steps ----------------------------------------------------------

struct Demo {
  DemoOptions opt;
  std::string self;  // our own binary
  std::string kv;    // spare-kv next to it
  std::string redis_cli;
  std::string dir;
  bool made_dir = false;
  pid_t agent = -1;
  pid_t kv_pid = -1;
  bool running = false;  // the instance was started
  std::vector<std::pair<std::string, std::string>> base;
  // Part 2 (hot): the spare host's agent and standby, two primary agents.
  pid_t spare_agent = -1, standby = -1;
  pid_t primary[2] = {-1, -1};
  int standby_port = 0;
  struct Hot {
    std::string id;
    int port = 0;
    int host = 0;  // primary 0 (a) or 1 (b)
    pid_t pid = -1;
    bool moved = false;  // now on the spare host
  };
  std::vector<Hot> hot;
  std::string HostDir(int host) const { return dir + (host == 0 ? "/host-a" : "/host-b"); }
  std::string SpareDir() const { return dir + "/spare-host"; }

  Result<ProcResult> Spare(std::vector<std::string> args) {
    args.insert(args.begin(), self);
    return RunProcess(args);
  }

  Result<nlohmann::json> Instance() { return InstanceAt(dir, "kv"); }

  Result<nlohmann::json> InstanceAt(const std::string& at, const std::string& want) {
    SPARE_ASSIGN_OR_RETURN(auto st, Spare({"status", "--agent", at, "--json"}));
    if (st.exit_code != 0) return Status(Code::kUnavailable, "spare status: " + st.err);
    auto j = nlohmann::json::parse(st.out, nullptr, false);
    SPARE_ASSIGN_OR_RETURN(const nlohmann::json* list,
                           ipc::Body(j, "spare status --json").Array("instances"));
    for (const auto& inst : *list) {
      SPARE_ASSIGN_OR_RETURN(std::string id, ipc::Body(inst, "spare status --json").String("id"));
      if (id == want) return inst;
    }
    return Status(Code::kNotFound, "spare status lists no instance " + want);
  }

  // The instance's pid per `spare status`; refuses anything that kill()
  // would not read as one process.
  Result<pid_t> KvPid() {
    SPARE_ASSIGN_OR_RETURN(auto inst, Instance());
    SPARE_ASSIGN_OR_RETURN(uint64_t pid, ipc::Body(inst, "instance kv").Uint("pid"));
    if (pid <= 1 || pid > INT32_MAX)
      return Status(Code::kBadMessage, "spare status shows no pid for kv: " + inst.dump());
    return static_cast<pid_t>(pid);
  }

  Status StartAgent() { return StartAgentAt(dir, {}, &agent); }

  // `spare agent --dir at EXTRA...`, waited for until it answers status.
  Status StartAgentAt(const std::string& at, std::vector<std::string> extra, pid_t* pid_out) {
    std::error_code ec;
    fs::create_directories(at, ec);
    std::string log = at + "/agent.log";
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) return Status::FromErrno("open " + log, errno);
    std::vector<std::string> argv{self, "agent", "--dir", at};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto pid = Spawn(argv, in, out, out, true);
    close(in), close(out);
    SPARE_ASSIGN_OR_RETURN(*pid_out, std::move(pid));
    for (auto start = Clock::now(); MsSince(start) < 10000; SleepMs(20)) {
      if (g_interrupted) return Interrupted();
      int wstatus;
      if (waitpid(*pid_out, &wstatus, WNOHANG) == *pid_out) {
        *pid_out = -1;
        return Status(Code::kUnavailable, "the agent exited with " +
                                              std::to_string(ExitCode(wstatus)) + "; see " + log);
      }
      auto st = Spare({"status", "--agent", at});
      if (st.ok() && st->exit_code == 0) return Status::Ok();
    }
    return Status(Code::kUnavailable, "the agent did not answer within 10 s; see " + log);
  }

  Status StartKv() {
    SPARE_ASSIGN_OR_RETURN(
        auto run, Spare({"run", "--agent", dir, "--id", "kv", "--policy", "local", "--max-restarts",
                         "1000", "--", kv, "--port", std::to_string(opt.port)}));
    if (run.exit_code != 0) {
      return Status(Code::kUnavailable, "spare run failed: " + run.err + run.out);
    }
    running = true;
    std::printf("%s", run.out.c_str());
    SPARE_ASSIGN_OR_RETURN(kv_pid, KvPid());
    return WaitPong(10000).status();
  }

  // Returns ms until PING is answered with PONG.
  Result<double> WaitPong(int timeout_ms) { return WaitPongAt(opt.port, timeout_ms); }
  Result<double> WaitPongAt(int port, int timeout_ms) {
    auto start = Clock::now();
    while (MsSince(start) < timeout_ms) {
      if (g_interrupted) return Interrupted();
      auto conn = RespClient::Connect(port);
      if (conn.ok()) {
        auto reply = conn->Call({"PING"});
        if (reply.ok() && reply->size() == 1 && (*reply)[0] == "PONG") return MsSince(start);
      }
      SleepMs(1);
    }
    return Status(Code::kUnavailable, "spare-kv did not answer PING within " +
                                          std::to_string(timeout_ms / 1000) + " s");
  }

  // Writes the base keys through redis-cli (one process, commands on stdin).
  Status WriteBase() {
    std::string input;
    for (int i = 0; i < kBaseKeys; ++i) {
      base.emplace_back("demo:" + std::to_string(i), "value-" + std::to_string(i * 7919));
      input += "SET " + base.back().first + " " + base.back().second + "\n";
    }
    SPARE_ASSIGN_OR_RETURN(auto r, RunProcess({redis_cli, "-p", std::to_string(opt.port)}, input));
    size_t oks = 0;
    for (size_t pos = 0; (pos = r.out.find("OK\n", pos)) != std::string::npos; pos += 3) ++oks;
    if (r.exit_code != 0 || oks != base.size()) {
      return Status(Code::kUnavailable, "redis-cli acknowledged " + std::to_string(oks) + " of " +
                                            std::to_string(base.size()) + " SETs: " + r.err);
    }
    std::printf("wrote %zu keys with redis-cli\n", base.size());
    return Status::Ok();
  }

  // Counts keys whose value differs from the acknowledged one.
  Result<size_t> CountLost(const std::vector<std::pair<std::string, std::string>>& keys) {
    return CountLostAt(opt.port, keys);
  }
  Result<size_t> CountLostAt(int port, const std::vector<std::pair<std::string, std::string>>& keys) {
    SPARE_ASSIGN_OR_RETURN(RespClient conn, RespClient::Connect(port));
    size_t lost = 0;
    for (size_t i = 0; i < keys.size(); i += 500) {
      std::vector<std::string> args{"MGET"};
      size_t end = std::min(keys.size(), i + 500);
      for (size_t k = i; k < end; ++k) args.push_back(keys[k].first);
      SPARE_ASSIGN_OR_RETURN(auto values, conn.Call(args));
      if (values.size() != end - i) return Status(Code::kBadMessage, "short MGET reply");
      for (size_t k = i; k < end; ++k) {
        if (values[k - i] != keys[k].second) {
          if (lost++ < 5) std::fprintf(stderr, "LOST: %s\n", keys[k].first.c_str());
        }
      }
    }
    return lost;
  }

  // One kill: kill -9 under load, time to PONG, then verify. Returns ms.
  Result<double> KillOnce(int i, LoadWriter& writer, std::mt19937& rng, size_t* verified,
                          size_t* lost) {
    SleepMs(std::uniform_int_distribution(100, 300)(rng));  // let the load run
    pid_t old = kv_pid;
    if (kill(old, SIGKILL) != 0) return Status::FromErrno("kill " + std::to_string(old), errno);
    auto killed = Clock::now();
    SPARE_RETURN_IF_ERROR(WaitPong(20000).status());
    double ms = MsSince(killed);
    for (auto start = Clock::now(); kv_pid == old; SleepMs(5)) {
      SPARE_ASSIGN_OR_RETURN(kv_pid, KvPid());
      if (kv_pid == old && MsSince(start) > 5000) {
        return Status(Code::kInternal, "spare-kv answers but status still shows the killed pid");
      }
    }
    auto keys = base;
    auto acked = writer.Acked();
    keys.insert(keys.end(), acked.begin(), acked.end());
    SPARE_ASSIGN_OR_RETURN(size_t n_lost, CountLost(keys));
    *verified = keys.size();
    *lost += n_lost;
    std::printf("kill %d/%d: pid %d -> %d, PONG after %.1f ms, %zu keys verified, %zu lost\n", i,
                opt.kills, old, kv_pid, ms, keys.size(), n_lost);
    std::fflush(stdout);
    return ms;
  }

  Status StartStandby() {
    SPARE_ASSIGN_OR_RETURN(standby_port, FreePort());
    std::string log = dir + "/standby.log";
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) return Status::FromErrno("open " + log, errno);
    auto pid = Spawn({self, "standby", "--listen", "127.0.0.1:" + std::to_string(standby_port),
                      "--name", "spare-host", "--agent", SpareDir(), "--dir",
                      SpareDir() + "/standby-state"},
                     in, out, out, true);
    close(in), close(out);
    SPARE_ASSIGN_OR_RETURN(standby, std::move(pid));
    for (auto start = Clock::now(); MsSince(start) < 10000; SleepMs(20)) {
      if (g_interrupted) return Interrupted();
      auto r = RunProcess({"/bin/grep", "-q", "listening on", log});
      if (r.ok() && r->exit_code == 0) return Status::Ok();
      int wstatus;
      if (waitpid(standby, &wstatus, WNOHANG) == standby) {
        standby = -1;
        return Status(Code::kUnavailable, "the standby exited; see " + log);
      }
    }
    return Status(Code::kUnavailable, "the standby did not listen within 10 s; see " + log);
  }

  // Part 2: hot protection, N primaries : 1 spare host, and a failover.
  Status RunHot(size_t* verified_out, size_t* lost_out) {
    if (!std::getenv("UCX_TLS")) ::setenv("UCX_TLS", "tcp", 1);
    // Everything runs on this machine: loopback only, whatever else its
    // interfaces are.
    if (!std::getenv("UCX_NET_DEVICES")) ::setenv("UCX_NET_DEVICES", "lo", 1);
    std::printf("\nspare demo, part 2: policy hot. A spare host (standby + its agent) protects two "
                "primary hosts (agents a and b) with two spare-kv instances each, every one under "
                "a pipelined write load; then agent a is killed (kill -9) with its instances. "
                "UCX_TLS=%s UCX_NET_DEVICES=%s\n",
                std::getenv("UCX_TLS"), std::getenv("UCX_NET_DEVICES"));
    std::fflush(stdout);
    SPARE_RETURN_IF_ERROR(StartAgentAt(SpareDir(), {}, &spare_agent));
    SPARE_RETURN_IF_ERROR(StartStandby());
    const std::string standby_at = "127.0.0.1:" + std::to_string(standby_port);
    for (int h = 0; h < 2; ++h)
      SPARE_RETURN_IF_ERROR(StartAgentAt(HostDir(h), {"--standby", standby_at}, &primary[h]));
    for (int h = 0; h < 2; ++h) {
      for (int i = 1; i <= 2; ++i) {
        Hot x;
        x.id = std::string("kv-") + (h == 0 ? "a" : "b") + std::to_string(i);
        x.host = h;
        SPARE_ASSIGN_OR_RETURN(x.port, FreePort());
        SPARE_ASSIGN_OR_RETURN(
            auto run, Spare({"run", "--agent", HostDir(h), "--id", x.id, "--policy", "hot", "--",
                             kv, "--port", std::to_string(x.port), "--region-size", "64M"}));
        if (run.exit_code != 0)
          return Status(Code::kUnavailable, "spare run " + x.id + " failed: " + run.err + run.out);
        SPARE_RETURN_IF_ERROR(WaitPongAt(x.port, 10000).status());
        SPARE_ASSIGN_OR_RETURN(auto inst, InstanceAt(HostDir(h), x.id));
        SPARE_ASSIGN_OR_RETURN(uint64_t pid, ipc::Body(inst, x.id).Uint("pid"));
        x.pid = static_cast<pid_t>(pid);
        std::printf("  %s on host %s, port %d, pid %d, policy hot\n", x.id.c_str(),
                    h == 0 ? "a" : "b", x.port, x.pid);
        hot.push_back(x);
      }
    }
    std::vector<std::unique_ptr<LoadWriter>> writers;
    for (const Hot& x : hot) writers.push_back(std::make_unique<LoadWriter>(x.port, 16, x.id));
    SleepMs(1500);
    // kill -9 of host a's agent and its instances: the host is gone.
    std::vector<size_t> before(hot.size(), 0);
    for (size_t i = 0; i < hot.size(); ++i) before[i] = writers[i]->Acked().size();
    kill(primary[0], SIGKILL);
    for (const Hot& x : hot)
      if (x.host == 0) kill(x.pid, SIGKILL);
    auto killed = Clock::now();
    Reap(primary[0], 5000);
    primary[0] = -1;
    std::printf("kill -9 of agent a and its instances\n");
    std::vector<double> ms;
    for (Hot& x : hot) {
      if (x.host != 0) continue;
      SPARE_RETURN_IF_ERROR(WaitPongAt(x.port, 20000).status());
      ms.push_back(MsSince(killed));
      x.moved = true;
    }
    SleepMs(300);  // the load goes on against the replacements
    for (auto& w : writers) w->Stop();
    size_t verified = 0, lost = 0, k = 0;
    for (size_t i = 0; i < hot.size(); ++i) {
      const Hot& x = hot[i];
      auto acked = writers[i]->Acked();
      SPARE_ASSIGN_OR_RETURN(size_t n_lost, CountLostAt(x.port, acked));
      std::vector<std::pair<std::string, std::string>> first(acked.begin(),
                                                             acked.begin() + before[i]);
      SPARE_ASSIGN_OR_RETURN(size_t lost_before, CountLostAt(x.port, first));
      verified += acked.size();
      lost += n_lost;
      if (!x.moved) {
        std::printf("%s (host b, untouched): %zu acknowledged writes verified, %zu lost\n",
                    x.id.c_str(), acked.size(), n_lost);
        continue;
      }
      SPARE_ASSIGN_OR_RETURN(auto inst, InstanceAt(SpareDir(), x.id));
      const nlohmann::json fj = inst.value("failover", nlohmann::json::object());
      auto f = [&](const char* k) {
        return fj.contains(k) && fj[k].is_number() ? fj[k].get<double>() : 0.0;
      };
      std::printf(
          "%s: failed over to the spare host in %.1f ms (detection %.1f, fencing %.2f, launch "
          "%.1f, first attach %.1f ms); %zu writes acknowledged before the kill, %zu of them on "
          "the replacement; %zu verified in all, %zu lost\n",
          x.id.c_str(), ms[k++], f("detection_ms"), f("fencing_ms"), f("launch_ms"),
          f("attach_ms"), before[i], before[i] - lost_before,
          acked.size(), n_lost);
    }
    SPARE_ASSIGN_OR_RETURN(auto table, Spare({"status", "--agent", SpareDir()}));
    std::printf("\nspare status on the spare host:\n%s\n", table.out.c_str());
    std::sort(ms.begin(), ms.end());
    std::printf("demo, part 2: %zu failovers, kill -> first reply p50 %.1f ms, max %.1f ms; %zu "
                "acknowledged writes verified on 4 instances, %zu %s\n",
                ms.size(), ms.empty() ? 0 : ms[ms.size() / 2], ms.empty() ? 0 : ms.back(),
                verified, lost, lost ? "LOST" : "lost");
    std::fflush(stdout);
    *verified_out = verified;
    *lost_out = lost;
    return Status::Ok();
  }

  Status Run() {
    std::printf("spare demo: spare-kv under a local agent, kill -9 %d times under write load\n",
                opt.kills);
    std::printf("agent dir %s, spare-kv on port %d\n", dir.c_str(), opt.port);
    std::fflush(stdout);
    SPARE_RETURN_IF_ERROR(StartAgent());
    SPARE_RETURN_IF_ERROR(StartKv());
    SPARE_RETURN_IF_ERROR(WriteBase());
    LoadWriter writer(opt.port);
    std::mt19937 rng(std::random_device{}());
    std::vector<double> ms;
    size_t verified = 0, lost = 0;
    for (int i = 1; i <= opt.kills; ++i) {
      if (g_interrupted) return Interrupted();
      SPARE_ASSIGN_OR_RETURN(double t, KillOnce(i, writer, rng, &verified, &lost));
      ms.push_back(t);
    }
    writer.Stop();
    SPARE_ASSIGN_OR_RETURN(auto table, Spare({"status", "--agent", dir}));
    std::printf("\n%s\n", table.out.c_str());
    std::sort(ms.begin(), ms.end());
    double p50 = ms.empty() ? 0 : ms[ms.size() / 2], max = ms.empty() ? 0 : ms.back();
    std::printf("demo: %d kills, restart p50 %.1f ms, max %.1f ms, %zu keys verified, %zu %s\n",
                opt.kills, p50, max, verified, lost, lost ? "LOST" : "lost");
    if (lost) return Status(Code::kInternal, std::to_string(lost) + " acknowledged keys lost");
    if (opt.local_only) return Status::Ok();
    size_t hot_verified = 0, hot_lost = 0;
    SPARE_RETURN_IF_ERROR(RunHot(&hot_verified, &hot_lost));
    if (hot_lost)
      return Status(Code::kInternal, std::to_string(hot_lost) + " acknowledged writes lost (hot)");
    return Status::Ok();
  }

  // On failure the directory (with the agent's and the instance's logs) is
  // kept and named.
  void Cleanup(bool failed) {
    if (opt.keep) {
      std::printf(
          "kept: agent pid %d, dir %s; spare-kv on port %d\n"
          "stop with: %s stop --agent %s --id kv; kill %d\n",
          agent, dir.c_str(), opt.port, self.c_str(), dir.c_str(), agent);
      return;
    }
    if (running && agent > 0) (void)Spare({"stop", "--agent", dir, "--id", "kv"});
    for (const Hot& x : hot) {
      if (x.moved && spare_agent > 0)
        (void)Spare({"stop", "--agent", SpareDir(), "--id", x.id});
      else if (!x.moved && primary[x.host] > 0)
        (void)Spare({"stop", "--agent", HostDir(x.host), "--id", x.id});
    }
    for (pid_t* p : {&primary[0], &primary[1], &spare_agent, &standby}) {
      if (*p <= 0) continue;
      kill(*p, SIGTERM);
      Reap(*p, 5000);
      *p = -1;
    }
    for (const Hot& x : hot)  // none may outlive the demo
      if (x.pid > 1 && kill(x.pid, 0) == 0 && !x.moved) kill(x.pid, SIGKILL);
    if (agent > 0) {
      kill(agent, SIGTERM);
      Reap(agent, 5000);
    }
    // Whatever happened above, no instance may outlive the demo: every one
    // any of its agents launched carries SPARE_AGENT=<a dir under ours>.
    if (kv_pid > 1 && kill(kv_pid, 0) == 0) kill(kv_pid, SIGKILL);
    KillInstancesUnder(dir);
    std::error_code ec;
    if (failed) {
      std::fprintf(stderr, "spare demo: logs kept in %s\n", dir.c_str());
    } else if (made_dir) {
      fs::remove_all(dir, ec);
    }
  }
};

Status Prepare(Demo* d) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return Status::FromErrno("readlink /proc/self/exe", errno);
  d->self.assign(exe, n);
  d->kv = (fs::path(d->self).parent_path() / "spare-kv").string();
  if (access(d->kv.c_str(), X_OK) != 0) {
    return Status(Code::kNotFound, d->kv + " not found: build it (it sits next to spare)");
  }
  auto cli = FindInPath("redis-cli");
  if (!cli) return Status(Code::kNotFound, "redis-cli not in PATH: install redis-tools");
  d->redis_cli = *cli;
  if (d->opt.kills < 1) return Status(Code::kInvalidArgument, "--kills must be at least 1");
  if (d->opt.port == 0) {
    SPARE_ASSIGN_OR_RETURN(d->opt.port, FreePort());
  }
  d->dir = d->opt.dir;
  if (d->dir.empty()) {
    std::string tmpl = (fs::temp_directory_path() / "spare-demo-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) return Status::FromErrno("mkdtemp " + tmpl, errno);
    d->dir = tmpl;
    d->made_dir = true;
  } else if (std::error_code ec; !fs::create_directories(d->dir, ec) && ec) {
    return Status(Code::kIoError, "create " + d->dir + ": " + ec.message());
  }
  return Status::Ok();
}

}  // namespace

int RunDemo(const DemoOptions& options) {
  Demo demo{.opt = options};
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a child that exits early must not kill us mid-write
  Status st = Prepare(&demo);
  if (st.ok()) st = demo.Run();
  demo.Cleanup(!st.ok() && !g_interrupted && !demo.dir.empty());
  if (!st.ok()) {
    std::fprintf(stderr, "spare demo: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace spare::cli
