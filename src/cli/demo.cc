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

#include "spare/status.h"

extern char** environ;

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

// ---- child processes (fork/exec, no shell) ---------------------------------

// Finds an executable by name in $PATH (or takes a path as it is).
std::optional<std::string> FindInPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = std::min(dirs.find(':', start), dirs.size());
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return std::nullopt;
}

// Forks and execs argv[0] (a path) with stdin/stdout/stderr set to the given
// fds. Everything the child needs is prepared before fork: the writer thread
// may hold locks.
Result<pid_t> Spawn(const std::vector<std::string>& argv, int in, int out, int err,
                    bool new_session) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return Status::FromErrno("fork", errno);
  if (pid == 0) {
    if (new_session) setsid();
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    close_range(3, ~0U, 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execve(args[0], args.data(), environ);
    dprintf(2, "exec %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

struct ProcResult {
  int exit_code = 0;  // 128 + signal when killed
  std::string out;
  std::string err;
};

int ExitCode(int wstatus) {
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

// Feeds `input` to stdin while collecting stdout and stderr until both
// close. Closes all three fds.
Status Pump(int in, int out, int err, const std::string& input, int timeout_ms,
            ProcResult* result) {
  int fds[3] = {out, err, input.empty() ? -1 : in};
  if (input.empty()) close(in);
  auto close_all = [&] {
    for (int& fd : fds) {
      if (fd >= 0) close(fd);
      fd = -1;
    }
  };
  size_t written = 0;
  auto start = Clock::now();
  char buf[16384];
  while (fds[0] >= 0 || fds[1] >= 0) {
    if (MsSince(start) > timeout_ms) {
      close_all();
      return Status(Code::kUnavailable, "timed out after " + std::to_string(timeout_ms) + " ms");
    }
    pollfd pfd[3] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}, {fds[2], POLLOUT, 0}};
    if (poll(pfd, 3, 50) < 0 && errno != EINTR) {
      close_all();
      return Status::FromErrno("poll", errno);
    }
    for (int i = 0; i < 2; ++i) {
      if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(pfd[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? result->out : result->err).append(buf, n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i]);
        fds[i] = -1;
      }
    }
    if (fds[2] >= 0 && (pfd[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t n = write(fds[2], input.data() + written, input.size() - written);
      if (n > 0) written += n;
      if (n < 0 || written == input.size()) {
        close(fds[2]);
        fds[2] = -1;
      }
    }
  }
  close_all();
  return Status::Ok();
}

// Runs argv to completion and captures its output.
Result<ProcResult> RunProcess(const std::vector<std::string>& argv, const std::string& input = "",
                              int timeout_ms = 30000) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    return Status::FromErrno("pipe", errno);
  }
  auto pid = Spawn(argv, in[0], out[1], err[1], false);
  close(in[0]), close(out[1]), close(err[1]);
  if (!pid.ok()) {
    close(in[1]), close(out[0]), close(err[0]);
    return pid.status();
  }
  ProcResult result;
  Status pumped = Pump(in[1], out[0], err[0], input, timeout_ms, &result);
  if (!pumped.ok()) kill(*pid, SIGKILL);
  int wstatus = 0;
  while (waitpid(*pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!pumped.ok()) return pumped.With(argv[0]);
  result.exit_code = ExitCode(wstatus);
  return result;
}

// Waits up to timeout_ms for pid to exit; SIGKILLs it past that.
void Reap(pid_t pid, int timeout_ms) {
  auto start = Clock::now();
  int wstatus;
  while (waitpid(pid, &wstatus, WNOHANG) == 0) {
    if (MsSince(start) > timeout_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &wstatus, 0);
      return;
    }
    SleepMs(10);
  }
}

// ---- a minimal RESP client (for the load, PING and the checks) ------------

class Resp {
 public:
  static Result<Resp> Connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno("socket", errno);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};  // a reply held longer than this counts as lost
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      Status st = Status::FromErrno("connect to 127.0.0.1:" + std::to_string(port), errno);
      close(fd);
      return st;
    }
    return Resp(fd);
  }
  Resp(Resp&& o) noexcept : fd_(std::exchange(o.fd_, -1)), buf_(std::move(o.buf_)) {}
  ~Resp() {
    if (fd_ >= 0) close(fd_);
  }

  // Sends one command; returns the reply: a status/integer/bulk as one item,
  // an array as its items; nullopt items are nils. "-ERR" replies are errors.
  Result<std::vector<std::optional<std::string>>> Call(const std::vector<std::string>& args) {
    std::string req = "*" + std::to_string(args.size()) + "\r\n";
    for (const auto& a : args) req += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
    for (size_t off = 0; off < req.size();) {
      ssize_t n = send(fd_, req.data() + off, req.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return Status::FromErrno("send", errno);
      off += n;
    }
    SPARE_ASSIGN_OR_RETURN(std::string line, Line());
    std::vector<std::optional<std::string>> items;
    if (line[0] == '-') return Status(Code::kFailedPrecondition, "server: " + line.substr(1));
    if (line[0] != '*') {
      SPARE_ASSIGN_OR_RETURN(auto item, Item(line));
      items.push_back(std::move(item));
      return items;
    }
    long count = std::strtol(line.c_str() + 1, nullptr, 10);
    for (long i = 0; i < count; ++i) {
      SPARE_ASSIGN_OR_RETURN(std::string head, Line());
      SPARE_ASSIGN_OR_RETURN(auto item, Item(head));
      items.push_back(std::move(item));
    }
    return items;
  }

 private:
  explicit Resp(int fd) : fd_(fd) {}

  Result<std::optional<std::string>> Item(const std::string& head) {
    if (head[0] == '+' || head[0] == ':') return std::optional<std::string>(head.substr(1));
    if (head[0] != '$') return Status(Code::kBadMessage, "unexpected reply: " + head);
    long len = std::strtol(head.c_str() + 1, nullptr, 10);
    if (len < 0) return std::optional<std::string>();
    SPARE_RETURN_IF_ERROR(Fill(len + 2));
    std::string value = buf_.substr(0, len);
    buf_.erase(0, len + 2);
    return std::optional<std::string>(std::move(value));
  }
  Result<std::string> Line() {
    size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos)
      SPARE_RETURN_IF_ERROR(Fill(buf_.size() + 1));
    std::string line = buf_.substr(0, eol);
    buf_.erase(0, eol + 2);
    if (line.empty()) return Status(Code::kBadMessage, "empty reply line");
    return line;
  }
  Status Fill(size_t want) {
    char chunk[65536];
    while (buf_.size() < want) {
      ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
      if (n == 0) return Status(Code::kUnavailable, "server closed the connection");
      if (n < 0) return Status::FromErrno("recv", errno);
      buf_.append(chunk, n);
    }
    return Status::Ok();
  }

  int fd_;
  std::string buf_;
};

// ---- the load: one connection issuing SETs, recording acknowledged ones ----

class Writer {
 public:
  explicit Writer(int port) : port_(port), thread_([this] { Loop(); }) {}
  ~Writer() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Keys acknowledged so far (with their values).
  std::vector<std::pair<std::string, std::string>> Acked() {
    std::lock_guard lock(mu_);
    return acked_;
  }

 private:
  void Loop() {
    std::mt19937_64 rng(std::random_device{}());
    std::optional<Resp> conn;
    for (uint64_t n = 0; !stop_; ++n) {
      if (!conn) {
        auto c = Resp::Connect(port_);
        if (!c.ok()) {
          SleepMs(1);
          continue;
        }
        conn.emplace(std::move(*c));
      }
      std::string key = "load:" + std::to_string(n);
      std::string value = "v" + std::to_string(n) + "-" + std::to_string(rng() % 1000000);
      auto reply = conn->Call({"SET", key, value});
      if (!reply.ok()) {
        conn.reset();  // killed mid-request: unacknowledged, never counted
        continue;
      }
      if (reply->size() == 1 && (*reply)[0] == "OK") {
        std::lock_guard lock(mu_);
        acked_.emplace_back(std::move(key), std::move(value));
      }
    }
  }

  int port_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> acked_;
  std::thread thread_;
};

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

  Result<ProcResult> Spare(std::vector<std::string> args) {
    args.insert(args.begin(), self);
    return RunProcess(args);
  }

  Result<nlohmann::json> Instance() {
    SPARE_ASSIGN_OR_RETURN(auto st, Spare({"status", "--agent", dir, "--json"}));
    if (st.exit_code != 0) return Status(Code::kUnavailable, "spare status: " + st.err);
    auto j = nlohmann::json::parse(st.out, nullptr, false);
    if (j.is_discarded() || !j.contains("instances")) {
      return Status(Code::kBadMessage, "spare status --json printed no instances: " + st.out);
    }
    for (const auto& inst : j["instances"]) {
      if (inst.value("id", "") == "kv") return inst;
    }
    return Status(Code::kNotFound, "spare status lists no instance kv");
  }

  // The instance's pid per `spare status`; refuses anything that kill()
  // would not read as one process.
  Result<pid_t> KvPid() {
    SPARE_ASSIGN_OR_RETURN(auto inst, Instance());
    pid_t pid = inst.value("pid", 0);
    if (pid <= 1)
      return Status(Code::kBadMessage, "spare status shows no pid for kv: " + inst.dump());
    return pid;
  }

  Status StartAgent() {
    std::string log = dir + "/agent.log";
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) return Status::FromErrno("open " + log, errno);
    auto pid = Spawn({self, "agent", "--dir", dir}, in, out, out, true);
    close(in), close(out);
    SPARE_ASSIGN_OR_RETURN(agent, std::move(pid));
    for (auto start = Clock::now(); MsSince(start) < 10000; SleepMs(20)) {
      if (g_interrupted) return Interrupted();
      int wstatus;
      if (waitpid(agent, &wstatus, WNOHANG) == agent) {
        agent = -1;
        return Status(Code::kUnavailable, "the agent exited with " +
                                              std::to_string(ExitCode(wstatus)) + "; see " + log);
      }
      auto st = Spare({"status", "--agent", dir});
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
  Result<double> WaitPong(int timeout_ms) {
    auto start = Clock::now();
    while (MsSince(start) < timeout_ms) {
      if (g_interrupted) return Interrupted();
      auto conn = Resp::Connect(opt.port);
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
    SPARE_ASSIGN_OR_RETURN(Resp conn, Resp::Connect(opt.port));
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
  Result<double> KillOnce(int i, Writer& writer, std::mt19937& rng, size_t* verified,
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

  Status Run() {
    std::printf("spare demo: spare-kv under a local agent, kill -9 %d times under write load\n",
                opt.kills);
    std::printf("agent dir %s, spare-kv on port %d\n", dir.c_str(), opt.port);
    std::fflush(stdout);
    SPARE_RETURN_IF_ERROR(StartAgent());
    SPARE_RETURN_IF_ERROR(StartKv());
    SPARE_RETURN_IF_ERROR(WriteBase());
    Writer writer(opt.port);
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
    if (agent > 0) {
      kill(agent, SIGTERM);
      Reap(agent, 5000);
    }
    // Whatever happened above, the instance must not outlive the demo.
    if (kv_pid > 1 && kill(kv_pid, 0) == 0) kill(kv_pid, SIGKILL);
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
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return Status::FromErrno("picking a free port", errno);
    }
    d->opt.port = ntohs(addr.sin_port);
    close(fd);
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
