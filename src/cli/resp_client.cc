#include "cli/resp_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <utility>

namespace spare::cli {

Result<RespClient> RespClient::Connect(int port) {
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
  return RespClient(fd);
}
RespClient::RespClient(RespClient&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), buf_(std::move(o.buf_)) {}
RespClient::~RespClient() {
  if (fd_ >= 0) close(fd_);
}

Status RespClient::Send(const std::vector<std::vector<std::string>>& commands) {
  std::string req;
  for (const auto& args : commands) {
    req += "*" + std::to_string(args.size()) + "\r\n";
    for (const auto& a : args) req += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  }
  for (size_t off = 0; off < req.size();) {
    ssize_t n = send(fd_, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return Status::FromErrno("send", errno);
    off += n;
  }
  return Status::Ok();
}

Result<std::vector<std::optional<std::string>>> RespClient::Read() {
  auto first = Line();
  if (!first.ok()) return first.status();
  const std::string& line = *first;  // never empty (Line refuses that)
  std::vector<std::optional<std::string>> items;
  if (line.front() == '-') return Status(Code::kFailedPrecondition, "server: " + line.substr(1));
  if (line.front() != '*') {
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

Result<std::vector<std::optional<std::string>>> RespClient::Call(
    const std::vector<std::string>& args) {
  SPARE_RETURN_IF_ERROR(Send({args}));
  return Read();
}

Result<std::optional<std::string>> RespClient::Item(const std::string& head) {
  if (head[0] == '+' || head[0] == ':') return std::optional<std::string>(head.substr(1));
  if (head[0] != '$') return Status(Code::kBadMessage, "unexpected reply: " + head);
  long len = std::strtol(head.c_str() + 1, nullptr, 10);
  if (len < 0) return std::optional<std::string>();
  SPARE_RETURN_IF_ERROR(Fill(len + 2));
  std::string value = buf_.substr(0, len);
  buf_.erase(0, len + 2);
  return std::optional<std::string>(std::move(value));
}
Result<std::string> RespClient::Line() {
  size_t eol;
  while ((eol = buf_.find("\r\n")) == std::string::npos)
    SPARE_RETURN_IF_ERROR(Fill(buf_.size() + 1));
  std::string line = buf_.substr(0, eol);
  buf_.erase(0, eol + 2);
  if (line.empty()) return Status(Code::kBadMessage, "empty reply line");
  return line;
}
Status RespClient::Fill(size_t want) {
  char chunk[65536];
  while (buf_.size() < want) {
    ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
    if (n == 0) return Status(Code::kUnavailable, "server closed the connection");
    if (n < 0) return Status::FromErrno("recv", errno);
    buf_.append(chunk, n);
  }
  return Status::Ok();
}

}  // namespace spare::cli
