#include "ipc/wire.h"

#include <sys/socket.h>
#include <sys/un.h>
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <cerrno>
#include <cstring>

namespace spare::ipc {
namespace {

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(v));
}
template <typename T>
T Get(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint64_t Checksum(const void* head24, std::string_view json, std::string_view blob) {
  XXH64_state_t st;
  XXH64_reset(&st, 0);
  XXH64_update(&st, head24, 24);
  XXH64_update(&st, json.data(), json.size());
  XXH64_update(&st, blob.data(), blob.size());
  return XXH64_digest(&st);
}

Status Bad(std::string what) { return Status(Code::kBadMessage, std::move(what)); }

}  // namespace

const char* MsgTypeName(MsgType type) {
  switch (type) {
    case MsgType::kOk:
      return "Ok";
    case MsgType::kError:
      return "Error";
    case MsgType::kAttach:
      return "Attach";
    case MsgType::kRegion:
      return "Region";
    case MsgType::kCommit:
      return "Commit";
    case MsgType::kReleased:
      return "Released";
    case MsgType::kDurable:
      return "Durable";
    case MsgType::kConfigGet:
      return "ConfigGet";
    case MsgType::kConfigPut:
      return "ConfigPut";
    case MsgType::kRun:
      return "Run";
    case MsgType::kStatus:
      return "Status";
    case MsgType::kStop:
      return "Stop";
    case MsgType::kTakeover:
      return "Takeover";
    case MsgType::kFailover:
      return "Failover";
  }
  return "Unknown";
}

Result<std::string> Encode(const Message& msg) {
  std::string json = msg.body.dump();
  if (json.size() > kMaxJson)
    return Status(Code::kInvalidArgument, "message body of " + std::to_string(json.size()) +
                                              " bytes exceeds the " + std::to_string(kMaxJson) +
                                              "-byte limit");
  if (msg.blob.size() > kMaxBlob)
    return Status(Code::kInvalidArgument, "message blob of " + std::to_string(msg.blob.size()) +
                                              " bytes exceeds the " + std::to_string(kMaxBlob) +
                                              "-byte limit");
  std::string out;
  out.reserve(kHeaderSize + json.size() + msg.blob.size());
  Put<uint32_t>(out, kMagic);
  Put<uint16_t>(out, kVersion);
  Put<uint16_t>(out, static_cast<uint16_t>(msg.type));
  Put<uint32_t>(out, static_cast<uint32_t>(json.size()));
  Put<uint32_t>(out, static_cast<uint32_t>(msg.blob.size()));
  Put<uint64_t>(out, msg.generation);
  Put<uint64_t>(out, Checksum(out.data(), json, msg.blob));
  out += json;
  out += msg.blob;
  return out;
}

Result<Message> Decode(std::span<const std::byte> f) {
  if (f.size() < kHeaderSize)
    return Bad("frame of " + std::to_string(f.size()) + " bytes is shorter than the header");
  const std::byte* p = f.data();
  if (Get<uint32_t>(p) != kMagic) return Bad("bad magic (not a spare frame)");
  uint16_t version = Get<uint16_t>(p + 4);
  if (version != kVersion)
    return Bad("unsupported protocol version " + std::to_string(version) + " (this side speaks " +
               std::to_string(kVersion) + ")");
  uint16_t type = Get<uint16_t>(p + 6);
  MsgType mt = static_cast<MsgType>(type);
  if (type > kMaxMsgType || std::strcmp(MsgTypeName(mt), "Unknown") == 0)
    return Bad("unknown message type " + std::to_string(type));
  uint64_t json_len = Get<uint32_t>(p + 8);
  uint64_t blob_len = Get<uint32_t>(p + 12);
  if (json_len > kMaxJson || blob_len > kMaxBlob)
    return Bad("declared lengths json=" + std::to_string(json_len) +
               " blob=" + std::to_string(blob_len) + " exceed the limits");
  if (kHeaderSize + json_len + blob_len != f.size())
    return Bad("declared lengths json=" + std::to_string(json_len) +
               " blob=" + std::to_string(blob_len) + " do not match the frame size " +
               std::to_string(f.size()));
  std::string_view json(reinterpret_cast<const char*>(p + kHeaderSize), json_len);
  std::string_view blob(reinterpret_cast<const char*>(p + kHeaderSize + json_len), blob_len);
  if (Get<uint64_t>(p + 24) != Checksum(p, json, blob)) return Bad("checksum mismatch");
  Message m;
  m.type = mt;
  m.generation = Get<uint64_t>(p + 16);
  m.body = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (m.body.is_discarded() || !m.body.is_object())
    return Bad(std::string(MsgTypeName(mt)) + " body is not a JSON object");
  m.blob.assign(blob);
  return m;
}

Result<bool> SendFrame(int sock, std::string_view frame, std::span<const UniqueFd> fds,
                       bool dont_wait) {
  if (fds.size() > kMaxFds)
    return Status(Code::kInvalidArgument, std::to_string(fds.size()) +
                                              " fds in one message (at most " +
                                              std::to_string(kMaxFds) + ")");
  iovec iov{const_cast<char*>(frame.data()), frame.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  if (!fds.empty()) {
    mh.msg_control = ctl;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    int* out = reinterpret_cast<int*>(CMSG_DATA(c));
    for (size_t i = 0; i < fds.size(); ++i) out[i] = fds[i].get();
  }
  const int flags = MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0);
  for (;;) {
    if (::sendmsg(sock, &mh, flags) >= 0) return true;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
      return Status(Code::kUnavailable, "peer closed the socket");
    return Status::FromErrno("sendmsg", errno);
  }
}

Status Send(int sock, const Message& msg) {
  SPARE_ASSIGN_OR_RETURN(std::string bytes, Encode(msg));
  auto sent = SendFrame(sock, bytes, msg.fds, /*dont_wait=*/false);
  if (!sent.ok()) {
    if (sent.status().code() == Code::kUnavailable) return sent.status();
    return sent.status().With(std::string("send ") + MsgTypeName(msg.type));
  }
  // Only a non-blocking socket gets here; callers of Send expect to block.
  if (!*sent) return Status::FromErrno(std::string("send ") + MsgTypeName(msg.type), EAGAIN);
  return Status::Ok();
}

Result<std::optional<Message>> Receive(int sock, bool dont_wait) {
  // One receive buffer per thread: this runs once per epoch on both sides.
  static thread_local std::string buf(kMaxFrame + 1, '\0');
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof(ctl);
  ssize_t r;
  do {
    r = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0));
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::optional<Message>();
    if (errno == ECONNRESET) return Status(Code::kUnavailable, "peer closed the socket");
    return Status::FromErrno("receive", errno);
  }
  std::vector<UniqueFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (size_t i = 0; i < n; ++i) fds.emplace_back(p[i]);
  }
  if (r == 0) return Status(Code::kUnavailable, "peer closed the socket");
  if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return Bad("frame or fd list truncated");
  auto m = Decode(std::as_bytes(std::span(buf.data(), static_cast<size_t>(r))));
  if (!m.ok()) return m.status();
  m->fds = std::move(fds);
  return std::optional<Message>(std::move(m).value());
}

Message OkMessage(nlohmann::json body) {
  Message m;
  m.type = MsgType::kOk;
  m.body = std::move(body);
  return m;
}

Message ErrorMessage(const Status& status) {
  Message m;
  m.type = MsgType::kError;
  m.body = {{"code", std::string(CodeName(status.code()))}, {"message", status.message()}};
  return m;
}

Status StatusOf(const Message& reply) {
  if (reply.type == MsgType::kOk) return Status::Ok();
  if (reply.type != MsgType::kError)
    return Bad(std::string("expected a reply, got ") + MsgTypeName(reply.type));
  std::string code = reply.body.value("code", "Internal");
  std::string text = reply.body.value("message", "(no message)");
  for (int c = 1; c <= static_cast<int>(Code::kInternal); ++c)
    if (CodeName(static_cast<Code>(c)) == code) return Status(static_cast<Code>(c), text);
  return Status(Code::kInternal, code + ": " + text);
}

Result<UniqueFd> Listen(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return Status(Code::kInvalidArgument, "socket path too long (max " +
                                              std::to_string(sizeof(addr.sun_path) - 1) +
                                              " bytes): " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Status::FromErrno("socket", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return Status::FromErrno("bind " + path, errno);
  if (::listen(fd.get(), 128) != 0) return Status::FromErrno("listen " + path, errno);
  return fd;
}

Result<UniqueFd> Connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return Status(Code::kInvalidArgument, "socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno("socket", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int e = errno;
    if (e == ENOENT || e == ECONNREFUSED)
      return Status(Code::kUnavailable,
                    "no agent listening at " + path + " (start one with `spare agent --dir DIR`)");
    return Status::FromErrno("connect " + path, e);
  }
  return fd;
}

}  // namespace spare::ipc
