#include "hot/live.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "hot/wire.h"

namespace spare::hot {
namespace {

constexpr auto kHelloWithin = std::chrono::seconds(1);
constexpr size_t kReadChunk = 4096;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(LiveClock::now().time_since_epoch())
      .count();
}

std::vector<std::byte> MakeFrame(Type type, const std::vector<std::byte>& body) {
  return Encode(Header{type, 0, 0, 0, 0}, body);
}

std::vector<std::byte> HeartbeatFrame() {
  return MakeFrame(Type::kHeartbeat, Body(Heartbeat{static_cast<uint64_t>(NowNs()), 0}));
}

void Wake(int fd) {
  const uint64_t one = 1;
  (void)!::write(fd, &one, sizeof(one));
}

void Drain(int fd) {
  uint64_t n;
  while (::read(fd, &n, sizeof(n)) == sizeof(n)) {
  }
}

void NoDelay(int fd) {
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Writes what it can of `out` (non-blocking); false on a broken connection.
bool Flush(int fd, std::vector<std::byte>& out) {
  while (!out.empty()) {
    const ssize_t w = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      out.erase(out.begin(), out.begin() + w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
    return false;
  }
  return true;
}

// Reads what is there into `in`. 0: more may come; 1: end of stream; -1: error (errno).
int ReadSome(int fd, std::vector<std::byte>& in) {
  for (int i = 0; i < 16; ++i) {
    std::byte buf[kReadChunk];
    const ssize_t r = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r > 0) {
      in.insert(in.end(), buf, buf + r);
      continue;
    }
    if (r == 0) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return -1;
  }
  return 0;
}

// The next whole frame at the front of `in`, if there is one. A bad frame
// is an error (the connection is then closed).
Result<std::optional<std::vector<std::byte>>> NextFrame(std::vector<std::byte>& in) {
  if (in.size() < kHeaderSize) return std::optional<std::vector<std::byte>>{};
  SPARE_ASSIGN_OR_RETURN(size_t size, FrameSize(std::span(in).first(kHeaderSize)));
  if (in.size() < size) return std::optional<std::vector<std::byte>>{};
  std::vector<std::byte> frame(in.begin(), in.begin() + size);
  in.erase(in.begin(), in.begin() + size);
  return std::optional(std::move(frame));
}

int MsUntil(LiveClock::time_point t) {
  const auto d = std::chrono::ceil<std::chrono::milliseconds>(t - LiveClock::now()).count();
  return d < 0 ? 0 : static_cast<int>(std::min<int64_t>(d, 1000));
}

std::string PeerOf(const sockaddr_in& a) {
  char ip[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
  return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

Result<sockaddr_in> Resolve(const std::string& host, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) == 1) return a;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0 || !res)
    return Status(Code::kInvalidArgument,
                  "liveness: cannot resolve " + host + ": " + ::gai_strerror(rc));
  a.sin_addr = reinterpret_cast<const sockaddr_in*>(res->ai_addr)->sin_addr;
  ::freeaddrinfo(res);
  return a;
}

}  // namespace

std::string RaiseThreadPriority() {
  sched_param sp{};
  sp.sched_priority = 1;
  if (::pthread_setschedparam(::pthread_self(), SCHED_RR, &sp) == 0) return "SCHED_RR 1";
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), -10) == 0)
    return "nice -10 (SCHED_RR not allowed)";
  return "normal priority (neither SCHED_RR nor a negative nice is allowed)";
}

// ---------------------------------------------------------------- server

struct LiveServer::Conn {
  uint64_t id = 0;
  UniqueFd fd;
  std::string peer, agent;
  bool hello = false;
  LiveClock::time_point opened{};
  std::vector<std::byte> in, out;
};

Result<std::unique_ptr<LiveServer>> LiveServer::Create(Options options, const LoopPulse* pulse) {
  std::unique_ptr<LiveServer> s(new LiveServer());
  s->options_ = std::move(options);
  s->pulse_ = pulse;
  SPARE_ASSIGN_OR_RETURN(sockaddr_in at, Resolve(s->options_.host, s->options_.port));
  s->listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s->listen_.valid()) return Status::FromErrno("liveness: socket", errno);
  const int one = 1;
  (void)::setsockopt(s->listen_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(s->listen_.get(), reinterpret_cast<const sockaddr*>(&at), sizeof(at)) != 0)
    return Status::FromErrno("liveness: bind " + s->options_.host + ":" +
                                 std::to_string(s->options_.port) +
                                 " (the liveness port: choose another with --live-port)",
                             errno);
  if (::listen(s->listen_.get(), 128) != 0) return Status::FromErrno("liveness: listen", errno);
  socklen_t len = sizeof(at);
  ::getsockname(s->listen_.get(), reinterpret_cast<sockaddr*>(&at), &len);
  s->port_ = ntohs(at.sin_port);
  s->event_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  s->wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!s->event_.valid() || !s->wake_.valid()) return Status::FromErrno("liveness: eventfd", errno);
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

LiveServer::~LiveServer() {
  stop_ = true;
  if (wake_.valid()) Wake(wake_.get());
  if (thread_.joinable()) thread_.join();
}

void LiveServer::ClearEvent() { Drain(event_.get()); }

std::optional<LiveServer::AgentLive> LiveServer::Get(const std::string& agent) const {
  std::lock_guard lock(mu_);
  auto it = agents_.find(agent);
  if (it == agents_.end()) return std::nullopt;
  return it->second;
}

void LiveServer::Revive(const std::string& agent) {
  std::lock_guard lock(mu_);
  auto it = agents_.find(agent);
  if (it != agents_.end()) it->second.died = false;
}

void LiveServer::Close(Conn& c, const std::string& why, bool death) {
  if (!c.fd.valid()) return;
  c.fd.reset();
  auto cur = current_.find(c.agent);
  if (!c.hello || cur == current_.end() || cur->second != c.id) {
    if (!why.empty()) spdlog::warn("standby liveness: connection from {} closed: {}", c.peer, why);
    return;
  }
  current_.erase(cur);
  const auto now = LiveClock::now();
  bool died = false, leaving = false;
  {
    std::lock_guard lock(mu_);
    AgentLive& a = agents_[c.agent];
    a.connected = false;
    leaving = now < a.leaving_until;
    if (death && !leaving) {
      a.died = died = true;
      a.died_at = now;
    }
  }
  if (died) {
    spdlog::warn("standby liveness: agent {}'s connection closed ({}): the agent process is gone",
                 c.agent, why);
    Wake(event_.get());
  } else if (leaving) {
    spdlog::info("standby liveness: agent {} left (it said Leaving)", c.agent);
  } else {
    spdlog::warn("standby liveness: agent {}'s connection closed: {}; it is judged by its "
                 "timeout from here",
                 c.agent, why);
  }
}

void LiveServer::Run() {
  const std::string prio = RaiseThreadPriority();
  spdlog::info("standby liveness: port {} (heartbeat {} ms, {})", port_, options_.heartbeat_ms,
               prio);
  std::vector<std::unique_ptr<Conn>> conns;
  uint64_t next_id = 1;
  const auto period = std::chrono::milliseconds(options_.heartbeat_ms);
  auto next_beat = LiveClock::now();
  std::vector<pollfd> fds;
  while (!stop_) {
    fds.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    fds.push_back({listen_.get(), POLLIN, 0});
    for (auto& c : conns)
      fds.push_back({c->fd.get(), static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    (void)::poll(fds.data(), fds.size(), MsUntil(next_beat));
    if (stop_) break;
    if (fds[0].revents) Drain(wake_.get());
    auto now = LiveClock::now();
    if (fds[1].revents & POLLIN) {
      for (int i = 0; i < 64; ++i) {
        sockaddr_in from{};
        socklen_t len = sizeof(from);
        UniqueFd fd(::accept4(listen_.get(), reinterpret_cast<sockaddr*>(&from), &len,
                              SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd.valid()) break;
        if (conns.size() >= options_.max_connections) {
          spdlog::warn("standby liveness: connection from {} refused: {} connections already "
                       "(the limit)",
                       PeerOf(from), conns.size());
          continue;
        }
        NoDelay(fd.get());
        auto c = std::make_unique<Conn>();
        c->id = next_id++;
        c->fd = std::move(fd);
        c->peer = PeerOf(from);
        c->opened = now;
        conns.push_back(std::move(c));
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      Conn& c = *conns[i - 2];
      if (!c.fd.valid() || fds[i].fd != c.fd.get()) continue;
      if (fds[i].revents & POLLOUT) {
        if (!Flush(c.fd.get(), c.out)) {
          Close(c, std::string("write: ") + std::strerror(errno), true);
          continue;
        }
      }
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int r = ReadSome(c.fd.get(), c.in);
      // Frames that arrived before an end of stream count (a Leaving, then close).
      for (int n = 0; n < 64 && c.fd.valid(); ++n) {
        auto next = NextFrame(c.in);
        if (!next.ok()) {
          Close(c, next.status().message(), false);
          break;
        }
        if (!next->has_value()) break;
        auto frame = Decode(**next);
        if (!frame.ok()) {
          Close(c, frame.status().message(), false);
          break;
        }
        const Header& h = frame->header;
        if (!c.hello) {
          if (h.type != Type::kHello) {
            Close(c, std::string(TypeName(h.type)) + " before Hello", false);
            break;
          }
          auto m = ParseHello(frame->body);
          if (!m.ok() || m->agent.empty()) {
            Close(c, m.ok() ? "Hello names no agent" : m.status().message(), false);
            break;
          }
          c.agent = m->agent;
          c.hello = true;
          // A newer connection of the same agent replaces the old one,
          // which is closed quietly (not a death).
          if (auto cur = current_.find(c.agent); cur != current_.end())
            for (auto& o : conns)
              if (o->id == cur->second) o->fd.reset();
          current_[c.agent] = c.id;
          {
            std::lock_guard lock(mu_);
            AgentLive& a = agents_[c.agent];
            a.connected = true;
            a.died = false;
            a.last_beat = now;
            a.leaving_until = {};
          }
          spdlog::info("standby liveness: agent {} connected from {}", c.agent, c.peer);
          continue;
        }
        if (h.type == Type::kHeartbeat) {
          if (auto m = ParseHeartbeat(frame->body); !m.ok()) {
            Close(c, m.status().message(), false);
            break;
          }
          std::lock_guard lock(mu_);
          AgentLive& a = agents_[c.agent];
          a.last_beat = now;
          a.beats++;
        } else if (h.type == Type::kLeaving) {
          auto m = ParseLeaving(frame->body);
          if (!m.ok()) {
            Close(c, m.status().message(), false);
            break;
          }
          std::lock_guard lock(mu_);
          agents_[c.agent].leaving_until = now + std::chrono::milliseconds(m->grace_ms);
        } else {
          Close(c, std::string(TypeName(h.type)) + " is not a liveness message", false);
          break;
        }
      }
      if (c.fd.valid() && r != 0)
        Close(c, r > 0 ? "end of stream" : std::string("read: ") + std::strerror(errno), true);
    }
    now = LiveClock::now();
    for (auto& c : conns)
      if (c->fd.valid() && !c->hello && now - c->opened > kHelloWithin)
        Close(*c, "no Hello within 1 s", false);
    if (now >= next_beat) {
      // Beat only for a loop that is running: a stalled standby is not hidden.
      if (!pulse_ || pulse_->FreshWithin(options_.stall)) {
        const auto beat = HeartbeatFrame();
        for (auto& c : conns) {
          if (!c->fd.valid() || !c->hello || !c->out.empty()) continue;
          c->out = beat;
          if (!Flush(c->fd.get(), c->out))
            Close(*c, std::string("write: ") + std::strerror(errno), true);
        }
      }
      next_beat = std::max(next_beat + period, now);
    }
    std::erase_if(conns, [](const auto& c) { return !c->fd.valid(); });
    // After what arrived is read: a fresh last_run() means the beats are noted.
    ran_ns_.store(NowNs());
  }
}

// ---------------------------------------------------------------- client

Result<std::unique_ptr<LiveClient>> LiveClient::Create(std::string agent,
                                                       std::chrono::milliseconds stall,
                                                       const LoopPulse* pulse) {
  std::unique_ptr<LiveClient> c(new LiveClient());
  c->agent_ = std::move(agent);
  c->stall_ = stall;
  c->pulse_ = pulse;
  c->wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!c->wake_.valid()) return Status::FromErrno("liveness: eventfd", errno);
  c->thread_ = std::thread([raw = c.get()] { raw->Run(); });
  return c;
}

LiveClient::~LiveClient() {
  stop_ = true;
  if (wake_.valid()) Wake(wake_.get());
  if (thread_.joinable()) thread_.join();
}

void LiveClient::Target(const std::string& host, uint16_t port, uint32_t heartbeat_ms) {
  {
    std::lock_guard lock(mu_);
    if (host == host_ && port == port_ && heartbeat_ms == heartbeat_ms_) return;
    host_ = host;
    port_ = port;
    heartbeat_ms_ = heartbeat_ms;
    ++target_version_;
  }
  Wake(wake_.get());
}

bool LiveClient::Leave(uint32_t grace_ms, std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  leave_ms_ = grace_ms;
  Wake(wake_.get());
  return left_cv_.wait_for(lock, wait, [this] { return left_; });
}

LiveClock::time_point LiveClient::last_heard() const {
  return LiveClock::time_point(std::chrono::nanoseconds(heard_ns_.load()));
}

void LiveClient::Run() {
  const std::string prio = RaiseThreadPriority();
  UniqueFd fd;
  bool connecting = false, leaving = false;
  std::vector<std::byte> in, out;
  uint64_t version = 0;
  std::string host;
  uint16_t port = 0;
  auto period = std::chrono::milliseconds(10);
  auto next_beat = LiveClock::now(), next_attempt = LiveClock::now();
  auto backoff = std::chrono::milliseconds(100);
  bool said_prio = false, quiet = false;  // quiet: failures since the last connection were said
  auto drop = [&](const std::string& why) {
    if (fd.valid() && !why.empty() && !quiet)
      spdlog::warn("agent liveness: connection to standby {}:{} closed: {}; reconnecting (every "
                   "2 s at most, quietly, until it answers or another standby welcomes this agent)",
                   host, port, why);
    quiet = true;
    fd.reset();
    connecting = false;
    connected_ = false;
    in.clear();
    out.clear();
    next_attempt = LiveClock::now() + backoff;
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  };
  while (!stop_) {
    std::optional<uint32_t> leave;
    {
      std::lock_guard lock(mu_);
      if (version != target_version_) {
        version = target_version_;
        if (fd.valid()) drop("the standby's address changed");
        quiet = false;
        host = host_;
        port = port_;
        period = std::chrono::milliseconds(heartbeat_ms_);
        next_attempt = LiveClock::now();
        backoff = std::chrono::milliseconds(100);
      }
      leave = leave_ms_;
      if (left_) leave.reset();
    }
    auto now = LiveClock::now();
    if (leave && !leaving) {
      if (fd.valid() && !connecting) {
        out.clear();
        auto f = MakeFrame(Type::kLeaving, Body(Leaving{*leave}));
        out.insert(out.end(), f.begin(), f.end());
        leaving = true;
      } else {  // nothing to tell: the standby does not hear us anyway
        std::lock_guard lock(mu_);
        left_ = true;
        left_cv_.notify_all();
      }
    }
    if (!fd.valid() && port != 0 && now >= next_attempt && !leaving) {
      bool left;
      {
        std::lock_guard lock(mu_);
        left = left_;
      }
      if (!left) {
        auto at = Resolve(host, port);
        if (!at.ok()) {
          spdlog::warn("agent liveness: {}", at.status().message());
          next_attempt = now + std::chrono::milliseconds(2000);
        } else {
          fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
          NoDelay(fd.get());
          if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*at), sizeof(*at)) == 0 ||
              errno == EINPROGRESS) {
            connecting = true;
          } else {
            drop(std::string("connect: ") + std::strerror(errno));
          }
        }
      }
    }
    pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {-1, 0, 0}};
    if (fd.valid())
      fds[1] = {fd.get(), static_cast<short>(POLLIN | (connecting || !out.empty() ? POLLOUT : 0)),
                0};
    auto until = fd.valid() && !connecting ? next_beat : next_attempt;
    if (port == 0 || leaving) until = now + std::chrono::seconds(1);
    (void)::poll(fds, 2, MsUntil(until));
    if (stop_) break;
    if (fds[0].revents) Drain(wake_.get());
    now = LiveClock::now();
    if (fd.valid() && connecting && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        drop(std::string("connect: ") + std::strerror(err));
        continue;
      }
      connecting = false;
      connected_ = true;
      quiet = false;
      backoff = std::chrono::milliseconds(100);
      heard_ns_ = NowNs();
      out = MakeFrame(Type::kHello, Body(Hello{agent_}));
      next_beat = now;
      spdlog::info("agent liveness: connected to standby {}:{}{}", host, port,
                   said_prio ? "" : " (thread " + prio + ")");
      said_prio = true;
    }
    if (fd.valid() && !connecting && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      const int r = ReadSome(fd.get(), in);
      for (int n = 0; n < 64; ++n) {
        auto next = NextFrame(in);
        if (!next.ok() || !next->has_value()) {
          if (!next.ok()) drop(next.status().message());
          break;
        }
        auto frame = Decode(**next);
        if (!frame.ok() || frame->header.type != Type::kHeartbeat) {
          drop(frame.ok() ? std::string(TypeName(frame->header.type)) +
                                " is not a liveness message"
                          : frame.status().message());
          break;
        }
        heard_ns_ = NowNs();
      }
      if (fd.valid() && r != 0) {
        drop(r > 0 ? "end of stream (the standby is gone)"
                   : std::string("read: ") + std::strerror(errno));
        continue;
      }
    }
    if (!fd.valid() || connecting) continue;
    if (!leaving && now >= next_beat) {
      // Beat only for a loop that is running: a stalled agent is not hidden.
      if (out.empty() && (!pulse_ || pulse_->FreshWithin(stall_))) out = HeartbeatFrame();
      next_beat = std::max(next_beat + period, now);
    }
    if (!out.empty() && !Flush(fd.get(), out)) {
      drop(std::string("write: ") + std::strerror(errno));
      continue;
    }
    if (leaving && out.empty()) {
      std::lock_guard lock(mu_);
      left_ = true;
      left_cv_.notify_all();
      // Stay connected but silent: the close comes with the process's end.
    }
  }
}

}  // namespace spare::hot
