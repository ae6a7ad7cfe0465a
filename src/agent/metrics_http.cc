// GET /metrics over plain HTTP/1.0-style exchanges (one request per
// connection), served from the agent's loop. Small on purpose: Prometheus
// needs nothing more, and nothing here may block the loop.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/agent.h"
#include "agent/status.h"

namespace spare::agent {
namespace {

constexpr size_t kMaxRequest = 8192;
constexpr size_t kMaxHttpConns = 64;

std::string Response(int code, const char* reason, const std::string& type,
                     const std::string& body) {
  return "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
         body;
}

}  // namespace

Status Agent::OpenHttp() {
  http_fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!http_fd_.valid()) return Status::FromErrno("socket", errno);
  int one = 1;
  ::setsockopt(http_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options_.metrics_port);
  std::string where =
      "metrics address " + options_.metrics_host + ":" + std::to_string(options_.metrics_port);
  if (::inet_pton(AF_INET, options_.metrics_host.c_str(), &addr.sin_addr) != 1)
    return Status(Code::kInvalidArgument, where + ": not an IPv4 address");
  if (::bind(http_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return Status::FromErrno("listen on " + where, errno);
  if (::listen(http_fd_.get(), 16) != 0) return Status::FromErrno("listen on " + where, errno);
  return AddWatch(http_fd_.get(), EPOLLIN, {WatchKind::kHttpListen}).status();
}

void Agent::AcceptHttp() {
  for (;;) {
    int fd = ::accept4(http_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    UniqueFd sock(fd);
    if (http_conns_.size() >= kMaxHttpConns) {
      // Make room by dropping the oldest: idle clients cannot lock scrapers out.
      auto oldest = std::min_element(
          http_conns_.begin(), http_conns_.end(),
          [](const auto& a, const auto& b) { return a.second.watch < b.second.watch; });
      CloseHttp(oldest->first);
    }
    auto token = AddWatch(fd, EPOLLIN, {WatchKind::kHttpConn});
    if (!token.ok()) continue;
    HttpConn& c = http_conns_[fd];
    c.fd = std::move(sock);
    c.watch = token.value();
  }
}

void Agent::OnHttp(int fd, uint32_t events) {
  auto it = http_conns_.find(fd);
  if (it == http_conns_.end()) return;
  HttpConn& c = it->second;
  if (c.out.empty() && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
    char buf[2048];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      return CloseHttp(fd);
    }
    c.in.append(buf, static_cast<size_t>(n));
    if (c.in.find("\r\n\r\n") == std::string::npos && c.in.find("\n\n") == std::string::npos) {
      if (c.in.size() > kMaxRequest) return CloseHttp(fd);
      return;
    }
    std::string line = c.in.substr(0, c.in.find_first_of("\r\n"));
    if (line.rfind("GET ", 0) != 0) {
      c.out = Response(405, "Method Not Allowed", "text/plain", "only GET is served\n");
    } else if (line.rfind("GET /metrics ", 0) == 0 || line == "GET /metrics") {
      auto text = MetricsText(StatusJson());
      c.out = text.ok() ? Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", *text)
                        : Response(500, "Internal Server Error", "text/plain",
                                   text.status().ToString() + "\n");
    } else {
      c.out = Response(404, "Not Found", "text/plain", "metrics are at /metrics\n");
    }
    ModifyWatch(c.watch, fd, EPOLLOUT);
  }
  while (c.sent < c.out.size()) {
    ssize_t n = ::send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      return CloseHttp(fd);
    }
    c.sent += static_cast<size_t>(n);
  }
  CloseHttp(fd);
}

void Agent::CloseHttp(int fd) {
  auto it = http_conns_.find(fd);
  if (it == http_conns_.end()) return;
  RemoveWatch(it->second.watch, fd);
  http_conns_.erase(it);
}

}  // namespace spare::agent
