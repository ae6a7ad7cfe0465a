#include "agent/agent.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

#include "common/files.h"
#include "agent/hot_link.h"

namespace spare::agent {

Agent::Agent(AgentOptions options, std::unique_ptr<Launcher> launcher)
    : options_(std::move(options)), launcher_(std::move(launcher)) {
  if (!launcher_) launcher_ = MakeForkLauncher();
  started_at_ = std::chrono::steady_clock::now();
}

Agent::~Agent() {
  // Remote keys live on the standby endpoint: drop them before it goes.
  for (auto& [id, inst] : instances_) inst->standby_key.reset();
  hot_.reset();
  live_.reset();  // its close tells the standby this process is gone (unless it said Leaving)
  if (socket_owned_) ::unlink(socket_path().c_str());
}

Result<std::unique_ptr<Agent>> Agent::Create(AgentOptions options,
                                             std::unique_ptr<Launcher> launcher) {
  if (options.dir.empty()) return Status(Code::kInvalidArgument, "agent directory is empty");
  while (options.dir.size() > 1 && options.dir.back() == '/') options.dir.pop_back();
  std::unique_ptr<Agent> agent(new Agent(std::move(options), std::move(launcher)));
  SPARE_RETURN_IF_ERROR(agent->Setup());
  return agent;
}

Status Agent::Setup() {
  SPARE_RETURN_IF_ERROR(MakeDirs(options_.dir + "/instances"));
  SPARE_RETURN_IF_ERROR(TakeLock());
  epoll_fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd_.valid()) return Status::FromErrno("epoll_create1", errno);
  timer_fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer_fd_.valid()) return Status::FromErrno("timerfd_create", errno);
  SPARE_RETURN_IF_ERROR(AddWatch(timer_fd_.get(), EPOLLIN, {WatchKind::kTimer}).status());
  SPARE_ASSIGN_OR_RETURN(applier_, Worker::Create("spare-apply"));
  SPARE_ASSIGN_OR_RETURN(io_, Worker::Create("spare-io"));
  for (Worker* w : {applier_.get(), io_.get()})
    SPARE_RETURN_IF_ERROR(AddWatch(w->notify_fd(), EPOLLIN, {WatchKind::kWorker}).status());
  if (options_.handle_signals) SPARE_RETURN_IF_ERROR(SetupSignals());
  SPARE_RETURN_IF_ERROR(OpenSocket());
  if (!options_.standby.empty()) {
    SPARE_ASSIGN_OR_RETURN(bool helper, ExitHelperFromEnv());
    if (helper) {
      auto h = ExitHelper::Start();
      if (h.ok()) {
        exit_helper_ = std::move(h).value();
        // Its own process group: a kill -9 of the agent's group (killpg, a
        // service manager's stop) must not take it too, or an agent thread
        // may be the one that tears the address space down after all.
        (void)::setpgid(exit_helper_.pid(), exit_helper_.pid());
      } else
        spdlog::warn("agent: no exit helper ({}): if this agent is killed, the standby may "
                     "learn of it only after its timeout",
                     h.status().ToString());
    }
    SPARE_RETURN_IF_ERROR(ConnectStandby());
  }
  if (options_.metrics_port != 0) SPARE_RETURN_IF_ERROR(OpenHttp());
  return LoadAndAdopt();
}

// DIR/agent.lock, flock'ed for the agent's lifetime: two agents starting
// at once cannot both decide the socket is stale.
Status Agent::TakeLock() {
  std::string path = options_.dir + "/agent.lock";
  lock_fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!lock_fd_.valid()) return Status::FromErrno("open " + path, errno);
  if (::flock(lock_fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Status::FromErrno("flock " + path, errno);
    auto text = ReadFile(path);
    std::string pid = text.ok() && text.value() ? *text.value() : "?";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return Status(Code::kAlreadyExists, "another agent (pid " + pid + ") is already running in " +
                                            options_.dir + "; stop it first or use another --dir");
  }
  std::string mine = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_.get(), 0) != 0 ||
      ::pwrite(lock_fd_.get(), mine.data(), mine.size(), 0) < 0)
    spdlog::warn("cannot write the agent pid into {}: {}", path, std::strerror(errno));
  return Status::Ok();
}

Status Agent::OpenSocket() {
  std::string path = socket_path();
  if (::access(path.c_str(), F_OK) == 0) {
    auto probe = ipc::Connect(path);
    if (probe.ok()) {
      ucred cred{};
      socklen_t len = sizeof(cred);
      ::getsockopt(probe->get(), SOL_SOCKET, SO_PEERCRED, &cred, &len);
      return Status(Code::kAlreadyExists, "another agent (pid " + std::to_string(cred.pid) +
                                              ") answers on " + path + "; stop it first");
    }
    spdlog::info("removing stale socket {} (nobody answers on it)", path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return Status::FromErrno("remove stale socket " + path, errno);
  }
  SPARE_ASSIGN_OR_RETURN(listen_fd_, ipc::Listen(path));
  socket_owned_ = true;
  return AddWatch(listen_fd_.get(), EPOLLIN, {WatchKind::kListen}).status();
}

Status Agent::SetupSignals() {
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  // The agent is the subreaper of what its instances leave behind when they
  // die (their exit helpers, runtime/exit_helper.h, and anything the app
  // started): SIGCHLD tells it to reap them (ReapOrphans).
  sigaddset(&set, SIGCHLD);
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
    return Status::FromErrno("prctl(PR_SET_CHILD_SUBREAPER)", errno);
  if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0) return Status::FromErrno("sigprocmask", errno);
  signal_fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_.valid()) return Status::FromErrno("signalfd", errno);
  return AddWatch(signal_fd_.get(), EPOLLIN, {WatchKind::kSignal}).status();
}

Result<uint64_t> Agent::AddWatch(int fd, uint32_t events, Watch w) {
  uint64_t token = next_watch_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
    return Status::FromErrno("epoll_ctl add", errno);
  w.fd = fd;
  watches_.emplace(token, std::move(w));
  return token;
}

void Agent::ModifyWatch(uint64_t token, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0)
    spdlog::warn("epoll_ctl mod fd {}: {}", fd, std::strerror(errno));
}

void Agent::RemoveWatch(uint64_t token, int fd) {
  if (watches_.erase(token)) ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

Status Agent::Run() {
  spdlog::info("spare agent: dir {}, socket {}, pid {}{}", options_.dir, socket_path(), ::getpid(),
               options_.metrics_port ? ", metrics on http://" + options_.metrics_host + ":" +
                                           std::to_string(options_.metrics_port) + "/metrics"
                                     : std::string());
  while (!stop_requested_) SPARE_RETURN_IF_ERROR(PollOnce(-1));
  Shutdown();
  return Status::Ok();
}

Status Agent::PollOnce(int timeout_ms) {
  epoll_event events[64];
  pulse_.Tick();
  int n = ::epoll_wait(epoll_fd_.get(), events, 64, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return Status::Ok();
    return Status::FromErrno("epoll_wait", errno);
  }
  for (int i = 0; i < n; ++i) HandleEvent(events[i].data.u64, events[i].events);
  ProgressStandby();  // sends started while handling go out, and re-arms its fd
  SweepDeadConns();
  return Status::Ok();
}

void Agent::HandleEvent(uint64_t token, uint32_t events) {
  auto it = watches_.find(token);
  if (it == watches_.end()) return;  // closed earlier in this round
  Watch w = it->second;
  switch (w.kind) {
    case WatchKind::kListen:
      AcceptClients();
      break;
    case WatchKind::kSignal:
      OnSignal();
      break;
    case WatchKind::kTimer:
      OnTimer();
      break;
    case WatchKind::kHttpListen:
      AcceptHttp();
      break;
    case WatchKind::kHttpConn:
      OnHttp(w.fd, events);
      break;
    case WatchKind::kPidfd:
      OnPidfdReadable(w.id);
      break;
    case WatchKind::kStandby:
      if (hot_ && w.fd == hot_->timer.get())
        OnStandbyTimer();
      else
        ProgressStandby();
      break;
    case WatchKind::kWorker:
      (w.fd == applier_->notify_fd() ? applier_ : io_)->RunCompletions();
      break;
    case WatchKind::kConn: {
      auto c = conns_.find(w.fd);
      if (c == conns_.end()) break;
      if (events & EPOLLOUT) FlushConn(c->second);
      if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadConn(w.fd, 64);
      break;
    }
  }
}

void Agent::AcceptClients() {
  for (;;) {
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        spdlog::warn("accept on {}: {}", socket_path(), std::strerror(errno));
      return;
    }
    Status st = AddConnection(UniqueFd(fd));
    if (!st.ok()) spdlog::warn("cannot serve a new connection: {}", st.ToString());
  }
}

Status Agent::AddConnection(UniqueFd sock) {
  int fd = sock.get();
  Conn conn;
  conn.serial = next_serial_++;
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) conn.peer_pid = cred.pid;
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  SPARE_ASSIGN_OR_RETURN(conn.watch, AddWatch(fd, EPOLLIN, {WatchKind::kConn}));
  conn.fd = std::move(sock);
  conns_.emplace(fd, std::move(conn));
  return Status::Ok();
}

void Agent::OnSignal() {
  signalfd_siginfo info{};
  bool child = false;
  while (::read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
    if (info.ssi_signo == SIGCHLD) {
      child = true;
      continue;
    }
    spdlog::info(
        "agent: got {}, shutting down (instances keep running; the next agent "
        "re-adopts them)",
        sigabbrev_np(static_cast<int>(info.ssi_signo)));
    stop_requested_ = true;
  }
  if (child) ReapOrphans();
}

// Reaps exited children that are not instances (instances are reaped through
// their pidfds, which also report how they ended). waitid(WNOWAIT) shows the
// first exited child without reaping it; an instance's stops the sweep, and
// OnPidfdReadable sweeps again once that instance is reaped.
void Agent::ReapOrphans() {
  for (int i = 0; i < 256; ++i) {
    siginfo_t info{};
    if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) return;
    const pid_t pid = info.si_pid;
    for (const auto& [id, inst] : instances_)
      if (inst->is_child && inst->pidfd.valid() && inst->rec.pid == pid) return;
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG) != 0) return;
    ++orphans_reaped_;
    spdlog::debug("agent: reaped pid {}, left behind by an instance ({} so far)", pid,
                  orphans_reaped_);
  }
}

void Agent::OnTimer() {
  uint64_t ticks;
  while (::read(timer_fd_.get(), &ticks, sizeof(ticks)) > 0) {
  }
  KillOverdue();
  for (auto& [id, inst] : instances_)
    if (inst->relaunch_at) MaybeRelaunch(*inst);  // a backed-off relaunch that is due
  ArmTimer();
}

// Arms the timerfd for the earliest SIGKILL deadline or backed-off relaunch (or disarms it).
void Agent::ArmTimer() {
  std::optional<SteadyTime> next;
  for (auto& [id, inst] : instances_)
    for (const auto& at : {inst->kill_at, inst->relaunch_at})
      if (at && (!next || *at < *next)) next = at;
  itimerspec its{};
  if (next) {
    auto left = *next - std::chrono::steady_clock::now();
    int64_t ns =
        std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(left).count());
    its.it_value.tv_sec = ns / 1'000'000'000;
    its.it_value.tv_nsec = ns % 1'000'000'000;
  }
  ::timerfd_settime(timer_fd_.get(), 0, &its, nullptr);
}

void Agent::WaitIdle() {
  // An apply's completion may post a state write, and a write's may not
  // post anything: drain until both are empty.
  while (applier_->outstanding() || io_->outstanding()) {
    applier_->Drain();
    io_->Drain();
  }
}

void Agent::Shutdown() {
  WaitIdle();  // queued epochs are applied and answered before the final save
  LeaveStandby();
  for (auto& [id, inst] : instances_) {
    if (inst->rec.state != InstanceState::kStopping || !inst->pidfd.valid()) continue;
    // The user asked for it to stop; do not leave that to the next agent.
    (void)SignalPidfd(inst->pidfd.get(), SIGKILL);
    inst->rec.state = InstanceState::kStopped;
    inst->rec.reason = "stopped (killed when the agent shut down)";
    inst->rec.pid = 0;
    ReleaseImage(*inst);
  }
  SaveStateOrLog();
  WaitIdle();
  if (socket_owned_) ::unlink(socket_path().c_str());
  socket_owned_ = false;
  listen_fd_.reset();
  spdlog::info("agent: stopped; {} instance(s) left running", [&] {
    int n = 0;
    for (auto& [id, inst] : instances_) n += inst->pidfd.valid() ? 1 : 0;
    return n;
  }());
}

std::string Agent::InstanceDir(const std::string& id) const {
  return options_.dir + "/instances/" + id;
}

const Instance* Agent::Find(std::string_view id) const {
  auto it = instances_.find(id);
  return it == instances_.end() ? nullptr : it->second.get();
}

Instance* Agent::FindMutable(std::string_view id) {
  auto it = instances_.find(id);
  return it == instances_.end() ? nullptr : it->second.get();
}

}  // namespace spare::agent
