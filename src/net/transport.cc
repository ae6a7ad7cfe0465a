// UCX behind net/transport.h. The UCP calls follow UCX 1.13's API
// (Debian 12) and examples/ucp_client_server.c in openucx/ucx.
#include "net/transport.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <set>
#include <unistd.h>

namespace spare::net {
namespace {

ucp_ep_h EP(void* p) { return static_cast<ucp_ep_h>(p); }
ucp_worker_h WK(void* p) { return static_cast<ucp_worker_h>(p); }
ucp_context_h CTX(void* p) { return static_cast<ucp_context_h>(p); }

Status FromUcs(ucs_status_t st, const std::string& what) {
  Code code = st == UCS_ERR_NO_MEMORY            ? Code::kResourceExhausted
              : st == UCS_ERR_INVALID_PARAM      ? Code::kInvalidArgument
              : st == UCS_ERR_UNREACHABLE        ? Code::kUnavailable
              : st == UCS_ERR_CONNECTION_RESET   ? Code::kUnavailable
              : st == UCS_ERR_ENDPOINT_TIMEOUT   ? Code::kUnavailable
              : st == UCS_ERR_REJECTED           ? Code::kUnavailable
              : st == UCS_ERR_BUSY               ? Code::kUnavailable
              : st == UCS_ERR_CANCELED           ? Code::kUnavailable
                                                 : Code::kInternal;
  return Status(code, what + ": " + ucs_status_string(st));
}

bool SameAddress(const sockaddr* a, const sockaddr* b) {
  if (a->sa_family != b->sa_family) return false;
  if (a->sa_family == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(b)->sin_addr.s_addr;
  if (a->sa_family == AF_INET6)
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr, 16) == 0;
  return false;
}

// One of this host's (this network namespace's) addresses, loopback included.
bool IsLocal(const sockaddr* addr) {
  if (addr->sa_family == AF_INET &&
      ntohl(reinterpret_cast<const sockaddr_in*>(addr)->sin_addr.s_addr) >> 24 == 127)
    return true;
  if (addr->sa_family == AF_INET6 &&
      IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(addr)->sin6_addr))
    return true;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return false;
  bool local = false;
  for (ifaddrs* a = list; a && !local; a = a->ifa_next)
    local = a->ifa_addr && SameAddress(a->ifa_addr, addr);
  ::freeifaddrs(list);
  return local;
}

// Whether UCX_TLS lets UCX use shared memory ("shm", one of its parts, or
// "all"; unset and "^..." lists allow it unless they exclude it).
bool TlsAllowsSharedMemory() {
  const char* v = std::getenv("UCX_TLS");
  if (!v || !*v) return true;
  std::string tls(v);
  const bool negated = tls[0] == '^';
  bool named = false;
  for (const char* t : {"shm", "posix", "sysv", "cma", "xpmem", "knem", "all"})
    named = named || tls.find(t) != std::string::npos;
  return negated ? !named : named;
}

ucp_err_handling_mode_t ModeOf(ErrorMode m) {
  return m == ErrorMode::kPeer ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
}

// host ("" or "*": any) and port into a sockaddr; names are resolved.
Status Resolve(const std::string& host, uint16_t port, bool passive, sockaddr_storage* out,
               socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const char* node = host.empty() || host == "*" ? nullptr : host.c_str();
  int rc = ::getaddrinfo(node, service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr)
    return Status(Code::kInvalidArgument,
                  "cannot resolve '" + host + "': " + ::gai_strerror(rc));
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return Status::Ok();
}

std::string Describe(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

}  // namespace

Result<Address> ParseAddress(std::string_view text, std::string_view flag, bool allow_any_port) {
  const std::string shown = std::string(flag) + " \"" + std::string(text) + "\"";
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size())
    return Status(Code::kInvalidArgument, shown + ": expected HOST:PORT, e.g. 10.0.0.9:7700");
  const std::string port(text.substr(colon + 1));
  char* end = nullptr;
  const unsigned long n = std::strtoul(port.c_str(), &end, 10);
  if (*end != '\0' || !std::isdigit(static_cast<unsigned char>(port[0])) || n > 65535 ||
      (n == 0 && !allow_any_port))
    return Status(Code::kInvalidArgument, shown + ": port must be " +
                                              (allow_any_port ? "0" : "1") + " to 65535");
  return Address{std::string(text.substr(0, colon)), static_cast<uint16_t>(n)};
}

const char* ErrorModeName(ErrorMode m) {
  return m == ErrorMode::kPeer ? "peer" : m == ErrorMode::kAuto ? "auto" : "none";
}

ErrorMode AutoErrorMode(const sockaddr* addr) {
  return IsLocal(addr) && TlsAllowsSharedMemory() ? ErrorMode::kNone : ErrorMode::kPeer;
}

// An operation in flight: what to call when it ends, and (for an active
// message) the copy of its bytes UCX reads until then.
struct Worker::Pending {
  Worker* worker = nullptr;
  Done done;
  std::vector<std::byte> buf;
};

// UCX's callbacks, with access to the private parts they complete.
struct Internal {
  static void OnSendDone(void* request, ucs_status_t status, void* user) {
    auto* op = static_cast<Worker::Pending*>(user);
    Status st = status == UCS_OK ? Status::Ok() : FromUcs(status, "transfer");
    ucp_request_free(request);
    if (op->done) op->worker->Defer([done = std::move(op->done), st] { done(st); });
    delete op;
  }
  static void OnEpError(void* arg, ucp_ep_h, ucs_status_t status) {
    static_cast<Endpoint*>(arg)->Fail(FromUcs(status, "endpoint failed"));
  }
  static ucs_status_t OnAm(void* arg, const void*, size_t, void* data, size_t length,
                           const ucp_am_recv_param_t* param) {
    auto* a = static_cast<std::pair<Worker*, uint16_t>*>(arg);
    Worker* w = a->first;
    // A rendezvous message would need a receive we never post (our sends
    // are eager): refused, dropped.
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
      ++w->refused_rndv_;
      return UCS_OK;
    }
    // The handler runs after UCX's progress returns (it may then close
    // endpoints), on a copy: control messages are small.
    void* reply = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
    const auto* p = static_cast<const std::byte*>(data);
    w->Defer([w, id = a->second, reply, bytes = std::vector<std::byte>(p, p + length)] {
      auto it = w->handlers_.find(id);
      if (it == w->handlers_.end() || !it->second) return;
      it->second(reply ? w->Find(reply) : nullptr, bytes);
    });
    return UCS_OK;
  }
  static void OnAccept(ucp_conn_request_h req, void* arg) {
    auto* w = static_cast<Worker*>(arg);
    w->Defer([w, req] { Accept(w, req); });
  }
  static void Accept(Worker* w, ucp_conn_request_h req);
};

namespace {
// Request parameters whose completion ends `op` (Internal::OnSendDone).
ucp_request_param_t CompletionParam(void* op) {
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.send = Internal::OnSendDone;
  rp.user_data = op;
  return rp;
}
}  // namespace

// --- Memory, RemoteKey ---

Memory::~Memory() {
  if (memh_) ucp_mem_unmap(CTX(worker_->context_), static_cast<ucp_mem_h>(memh_));
}

RemoteKey::~RemoteKey() {
  if (rkey_) ucp_rkey_destroy(static_cast<ucp_rkey_h>(rkey_));
}

// --- Endpoint ---

Endpoint::~Endpoint() {
  if (!ep_) return;
  worker_->eps_.erase(ep_);
  // Forced only where UCX defines it: a failed endpoint, unless it is a
  // NONE-mode one its owner gave up while UCX still had it working.
  worker_->CloseEp(ep_, failed() && !(abandoned_ && mode_ == ErrorMode::kNone));
}

void Endpoint::Fail(const Status& st) {
  if (!error_.ok()) return;
  error_ = Status(st.code(), "peer " + peer_ + ": " + st.message());
  // Looked up again when it runs: the owner may have destroyed it by then.
  Worker* w = worker_;
  void* ep = ep_;
  w->Defer([w, ep] {
    Endpoint* e = w->Find(ep);
    if (!e || !e->on_error_) return;
    auto f = e->on_error_;  // the callback may destroy the endpoint, and with it on_error_
    Status err = e->error_;
    f(err);
  });
}

Status Endpoint::SendAm(uint16_t id, std::span<const std::byte> bytes, Done done) {
  return SendAm(id, std::vector<std::byte>(bytes.begin(), bytes.end()), std::move(done));
}

Status Endpoint::SendAm(uint16_t id, std::vector<std::byte>&& bytes, Done done) {
  if (failed()) return error_;
  auto* op = new Worker::Pending{worker_, std::move(done), std::move(bytes)};
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                    UCP_OP_ATTR_FIELD_FLAGS;
  // Eager only: the receiver's handler always gets the whole message in
  // place (control messages are small; bulk data goes by Put).
  rp.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  rp.cb.send = Internal::OnSendDone;
  rp.user_data = op;
  void* req = ucp_am_send_nbx(EP(ep_), id, nullptr, 0, op->buf.data(), op->buf.size(), &rp);
  return worker_->Start(req, op, "active message");
}

Status Endpoint::Put(const void* local, size_t len, uint64_t remote, const RemoteKey& key,
                     Done done) {
  if (failed()) return error_;
  auto* op = new Worker::Pending{worker_, std::move(done), {}};
  ucp_request_param_t rp = CompletionParam(op);
  void* req =
      ucp_put_nbx(EP(ep_), local, len, remote, static_cast<ucp_rkey_h>(key.rkey_), &rp);
  return worker_->Start(req, op, "put");
}

Status Endpoint::Flush(Done done) {
  if (failed()) return error_;
  auto* op = new Worker::Pending{worker_, std::move(done), {}};
  ucp_request_param_t rp = CompletionParam(op);
  return worker_->Start(ucp_ep_flush_nbx(EP(ep_), &rp), op, "flush");
}

Result<std::unique_ptr<RemoteKey>> Endpoint::UnpackKey(std::span<const std::byte> packed) {
  if (packed.empty()) return Status(Code::kInvalidArgument, "empty remote key");
  std::unique_ptr<RemoteKey> key(new RemoteKey());
  ucp_rkey_h rkey = nullptr;
  ucs_status_t st = ucp_ep_rkey_unpack(EP(ep_), packed.data(), &rkey);
  if (st != UCS_OK) return FromUcs(st, "unpacking the remote key of " + peer_);
  key->rkey_ = rkey;
  return key;
}

// --- Worker ---

Result<std::unique_ptr<Worker>> Worker::Create() {
  std::unique_ptr<Worker> w(new Worker());
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return FromUcs(st, "reading UCX configuration");
  ucp_params_t p{};
  p.field_mask = UCP_PARAM_FIELD_FEATURES;
  p.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  ucp_context_h ctx = nullptr;
  st = ucp_init(&p, config, &ctx);
  ucp_config_release(config);
  if (st != UCS_OK) return FromUcs(st, "ucp_init");
  w->context_ = ctx;
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(ctx, &wp, &worker);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_create");
  w->worker_ = worker;
  st = ucp_worker_get_efd(worker, &w->efd_);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_get_efd");
  w->kick_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  w->epfd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!w->kick_.valid() || !w->epfd_.valid())
    return Status::FromErrno("eventfd/epoll for the UCX worker", errno);
  for (int fd : {w->efd_, w->kick_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(w->epfd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      return Status::FromErrno("epoll_ctl for the UCX worker", errno);
  }
  return w;
}

Worker::~Worker() {
  if (listener_) ucp_listener_destroy(static_cast<ucp_listener_h>(listener_));
  // Endpoints closing gracefully get a bounded time to finish.
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  while (!closing_.empty() && std::chrono::steady_clock::now() < end) {
    Progress();
    if (!closing_.empty()) ::usleep(1000);
  }
  due_.clear();
  if (!closing_.empty()) {
    std::fprintf(stderr, "spare: %zu UCX endpoint close(s) still pending after 200 ms; not "
                         "destroying the UCX worker\n", closing_.size());
    return;
  }
  if (worker_) ucp_worker_destroy(WK(worker_));
  if (context_) ucp_cleanup(CTX(context_));
}

Status Worker::Start(void* req, Pending* op, const char* what) {
  if (req == nullptr) {  // done at once
    if (op->done) Defer([done = std::move(op->done)] { done(Status::Ok()); });
    delete op;
    return Status::Ok();
  }
  if (UCS_PTR_IS_ERR(req)) {
    ucs_status_t st = UCS_PTR_STATUS(req);
    delete op;
    return FromUcs(st, what);
  }
  return Status::Ok();  // OnSendDone ends it
}

void Worker::Progress() {
  ++depth_;
  uint64_t kicks = 0;
  if (::read(kick_.get(), &kicks, sizeof(kicks)) < 0) kicks = 0;  // drained (or nothing)
  const auto deadline = std::chrono::steady_clock::now() + kProgressBudget;
  for (int round = 0; round < 1000; ++round) {
    while (ucp_worker_progress(WK(worker_)) != 0) {
      if (std::chrono::steady_clock::now() > deadline) break;
    }
    // Callbacks that became due; they may start more work.
    while (!due_.empty()) {
      std::vector<std::function<void()>> now;
      now.swap(due_);
      for (auto& f : now) f();
    }
    for (size_t i = 0; i < closing_.size();) {
      if (ucp_request_check_status(closing_[i]) != UCS_INPROGRESS) {
        ucp_request_free(closing_[i]);
        closing_[i] = closing_.back();
        closing_.pop_back();
      } else {
        ++i;
      }
    }
    if (ucp_worker_arm(WK(worker_)) != UCS_ERR_BUSY && due_.empty()) break;
    if (std::chrono::steady_clock::now() > deadline) {
      const uint64_t one = 1;  // come back soon: more work is waiting
      if (::write(kick_.get(), &one, sizeof(one)) < 0) {
      }
      break;
    }
  }
  --depth_;
}

Status Worker::SetAmHandler(uint16_t id, AmHandler handler) {
  handlers_[id] = std::move(handler);
  am_args_.push_back(std::make_unique<std::pair<Worker*, uint16_t>>(this, id));
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  hp.id = id;
  hp.flags = UCP_AM_FLAG_WHOLE_MSG;
  hp.arg = am_args_.back().get();
  hp.cb = Internal::OnAm;
  ucs_status_t st = ucp_worker_set_am_recv_handler(WK(worker_), &hp);
  if (st != UCS_OK) return FromUcs(st, "setting the handler of active message " + std::to_string(id));
  return Status::Ok();
}

Result<std::unique_ptr<Endpoint>> Worker::Connect(const std::string& host, uint16_t port,
                                                  ErrorMode mode) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  SPARE_RETURN_IF_ERROR(Resolve(host, port, /*passive=*/false, &ss, &len));
  std::unique_ptr<Endpoint> e(new Endpoint());
  e->worker_ = this;
  e->mode_ = mode == ErrorMode::kAuto ? AutoErrorMode(reinterpret_cast<const sockaddr*>(&ss)) : mode;
  e->peer_ = host + ":" + std::to_string(port);
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
  ep.sockaddr.addrlen = len;
  ep.err_mode = ModeOf(e->mode_);
  ep.err_handler.cb = Internal::OnEpError;
  ep.err_handler.arg = e.get();
  ucp_ep_h h = nullptr;
  ucs_status_t st = ucp_ep_create(WK(worker_), &ep, &h);
  if (st != UCS_OK) return FromUcs(st, "connecting to " + e->peer_);
  e->ep_ = h;
  eps_[h] = e.get();
  return e;
}

void Internal::Accept(Worker* w, ucp_conn_request_h req) {
  std::unique_ptr<Endpoint> e(new Endpoint());
  e->worker_ = w;
  e->mode_ = w->listen_mode_;
  ucp_conn_request_attr_t attr{};
  attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
  const bool known = ucp_conn_request_query(req, &attr) == UCS_OK;
  const auto* client = reinterpret_cast<const sockaddr*>(&attr.client_address);
  e->peer_ = known ? Describe(client) : "?";
  if (e->mode_ == ErrorMode::kAuto)
    e->mode_ = known ? AutoErrorMode(client) : ErrorMode::kPeer;
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                  UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep.conn_request = req;
  ep.err_mode = ModeOf(e->mode_);
  ep.err_handler.cb = Internal::OnEpError;
  ep.err_handler.arg = e.get();
  ucp_ep_h h = nullptr;
  if (ucs_status_t st = ucp_ep_create(WK(w->worker_), &ep, &h); st != UCS_OK) {
    // Not rejected here: a failed ucp_ep_create has already rejected (and
    // freed) the request on its error paths (a second reject crashed).
    std::fprintf(stderr, "spare: a connection from %s was refused: %s (error mode %s; both "
                 "ends must use the same one)\n",
                 e->peer_.c_str(), ucs_status_string(st), ErrorModeName(e->mode_));
    return;
  }
  e->ep_ = h;
  w->eps_[h] = e.get();
  if (w->on_accept_) w->on_accept_(std::move(e));
}

Result<uint16_t> Worker::Listen(const std::string& host, uint16_t port, ErrorMode mode,
                                std::function<void(std::unique_ptr<Endpoint>)> on_accept) {
  if (listener_) return Status(Code::kFailedPrecondition, "this worker already listens");
  sockaddr_storage ss{};
  socklen_t len = 0;
  SPARE_RETURN_IF_ERROR(Resolve(host, port, /*passive=*/true, &ss, &len));
  listen_mode_ = mode;
  on_accept_ = std::move(on_accept);
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
  lp.sockaddr.addrlen = len;
  lp.conn_handler.cb = Internal::OnAccept;
  lp.conn_handler.arg = this;
  ucp_listener_h l = nullptr;
  ucs_status_t st = ucp_listener_create(WK(worker_), &lp, &l);
  if (st != UCS_OK)
    return FromUcs(st, "listening on " + host + ":" + std::to_string(port));
  listener_ = l;
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  st = ucp_listener_query(l, &attr);
  if (st != UCS_OK) return FromUcs(st, "ucp_listener_query");
  const sockaddr* sa = reinterpret_cast<const sockaddr*>(&attr.sockaddr);
  if (sa->sa_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
  if (sa->sa_family == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
  return port;
}

Result<std::unique_ptr<Memory>> Worker::Map(void* base, size_t size) {
  if (base == nullptr || size == 0)
    return Status(Code::kInvalidArgument, "cannot register an empty memory range");
  std::unique_ptr<Memory> m(new Memory());
  m->worker_ = this;
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = base;
  mp.length = size;
  ucp_mem_h memh = nullptr;
  ucs_status_t st = ucp_mem_map(CTX(context_), &mp, &memh);
  if (st != UCS_OK) return FromUcs(st, "registering " + std::to_string(size) + " bytes");
  m->memh_ = memh;
  m->base_ = static_cast<std::byte*>(base);
  m->size_ = size;
  void* buf = nullptr;
  size_t len = 0;
  st = ucp_rkey_pack(CTX(context_), memh, &buf, &len);
  if (st != UCS_OK) return FromUcs(st, "packing a memory key");
  m->packed_.assign(static_cast<const char*>(buf), len);
  ucp_rkey_buffer_release(buf);
  return m;
}

void Worker::CloseEp(void* ep, bool force) {
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  rp.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* req = ucp_ep_close_nbx(EP(ep), &rp);
  if (UCS_PTR_IS_PTR(req)) closing_.push_back(req);
}

Endpoint* Worker::Find(void* ep) const {
  auto it = eps_.find(ep);
  return it == eps_.end() ? nullptr : it->second;
}

std::string Worker::TransportsOf(const Endpoint& e) const {
  char* text = nullptr;
  size_t len = 0;
  FILE* f = ::open_memstream(&text, &len);
  if (!f) return "?";
  ucp_ep_print_info(EP(e.ep_), f);
  std::fclose(f);
  // Lines like "#   lane[0]:  3:posix/memory.0 md[2] ..." name each lane's
  // transport/device.
  std::set<std::string> names;
  std::string all(text, len);
  std::free(text);
  for (size_t at = all.find("lane["); at != std::string::npos; at = all.find("lane[", at + 1)) {
    size_t colon = all.find(':', all.find(']', at));
    if (colon == std::string::npos) break;
    size_t start = all.find(':', colon + 1);
    if (start == std::string::npos) break;
    size_t end = all.find_first_of(" \n", start + 1);
    std::string tl = all.substr(start + 1, end - start - 1);
    names.insert(tl.substr(0, tl.find('/')));
  }
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ",") + n;
  return out.empty() ? "?" : out;
}

}  // namespace spare::net
