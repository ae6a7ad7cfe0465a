// server.cc — setting the server up, INFO, and shutting it down.
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "server_conn.h"

namespace kv {
namespace {

int64_t NowMs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

void Field(std::string* out, std::string_view name, std::string_view value) {
  out->append(name);
  out->push_back(':');
  out->append(value);
  out->append("\r\n");
}
void Field(std::string* out, std::string_view name, uint64_t value) {
  Field(out, name, std::to_string(value));
}

spare::Status AddToEpoll(int epfd, int fd) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
    return spare::Status::FromErrno("epoll_ctl", errno);
  return spare::Status::Ok();
}

}  // namespace

Server::Server(spare::Runtime runtime, ServerOptions options)
    : rt_(std::move(runtime)), options_(std::move(options)), protected_(rt_.protected_mode()) {}

Server::~Server() {
  for (auto& c : conns_) {
    if (c != nullptr && !c->dead) close(c->fd);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (signal_fd_ >= 0) close(signal_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

spare::Result<std::unique_ptr<Server>> Server::Create(spare::Runtime runtime,
                                                      ServerOptions options) {
  std::unique_ptr<Server> s(new Server(std::move(runtime), std::move(options)));
  s->start_ms_ = NowMs(CLOCK_MONOTONIC);
  spare::RegionOptions ropts;
  ropts.writes = s->options_.declared_writes ? spare::WriteTracking::kDeclared
                                             : spare::WriteTracking::kPages;
  auto region = s->rt_.region("kv", s->options_.region_size, ropts);
  if (!region.ok()) return region.status().With("mapping region kv");
  auto arena = spare::Arena::Open((*region)->data(), (*region)->size());
  if (!arena.ok()) return arena.status().With("opening the arena in region kv");
  s->arena_ = *arena;
  auto store = Store::Open(s->arena_);
  if (!store.ok()) return store.status().With("opening the store in region kv");
  s->store_ = std::make_unique<Store>(std::move(store).value());
  CommandsOptions copts;
  copts.port = s->options_.port;
  copts.bind = s->options_.bind;
  copts.max_bulk = s->options_.limits.max_bulk;
  copts.max_clients = s->options_.max_clients;
  copts.maxmemory = s->options_.maxmemory;
  copts.hz = s->options_.hz;
  copts.max_query_buffer = s->options_.max_query_buffer;
  copts.users = s->options_.users;
  s->commands_ = std::make_unique<Commands>(s->store_.get(), s.get(), copts);
  Server* self = s.get();
  s->commands_->set_checkpoint([self] {
    if (self->checkpoint_error_.ok()) self->checkpoint_error_ = self->Commit();
    return self->checkpoint_error_.ok();
  });
  s->resumed_epoch_ = s->rt_.resumed() ? s->rt_.epoch() : 0;
  s->state_epoch_ = s->rt_.epoch();
  // Make the freshly created store an epoch of its own, so that a restart
  // before the first write already resumes.
  if (!s->rt_.resumed()) SPARE_RETURN_IF_ERROR(s->Commit());
  s->batch_mutations_ = s->store_->mutations();
  SPARE_RETURN_IF_ERROR(s->Listen());
  return s;
}

spare::Status Server::Listen() {
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
    return spare::Status::FromErrno("sigprocmask", errno);
  signal_fd_ = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd_ < 0) return spare::Status::FromErrno("signalfd", errno);

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(options_.port));
  if (inet_pton(AF_INET, options_.bind.c_str(), &addr.sin_addr) != 1) {
    return spare::Status(spare::Code::kInvalidArgument,
                         "--bind " + options_.bind + ": not an IPv4 address");
  }
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return spare::Status::FromErrno("socket", errno);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return spare::Status::FromErrno("bind " + options_.bind + ":" + std::to_string(options_.port),
                                    errno);
  }
  if (listen(listen_fd_, 511) != 0) return spare::Status::FromErrno("listen", errno);
  socklen_t len = sizeof addr;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  options_.port = ntohs(addr.sin_port);  // --port 0 picks one

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return spare::Status::FromErrno("epoll_create1", errno);
  SPARE_RETURN_IF_ERROR(AddToEpoll(epoll_fd_, listen_fd_));
  SPARE_RETURN_IF_ERROR(AddToEpoll(epoll_fd_, signal_fd_));
  if (rt_.fd() >= 0) SPARE_RETURN_IF_ERROR(AddToEpoll(epoll_fd_, rt_.fd()));

  const StoreStats st = store_->stats();
  std::string resumed = rt_.resumed() ? "resumed at epoch " + std::to_string(resumed_epoch_) +
                                            " with " + std::to_string(st.keys) + " keys"
                                      : "fresh store";
  auto rec = rt_.record();
  if (rt_.resumed() && !rec.empty()) {
    resumed += " (" + std::string(reinterpret_cast<const char*>(rec.data()), rec.size()) + ")";
  }
  std::fprintf(stderr, "spare-kv: listening on %s:%d, %s (instance %s, tracker %s), %s\n",
               options_.bind.c_str(), options_.port, protected_ ? "protected" : "UNPROTECTED",
               rt_.instance_id().c_str(), rt_.stats().tracker.c_str(), resumed.c_str());
  for (const CheckpointReport& r : options_.checkpoints) {
    std::fprintf(stderr, "spare-kv: %s %s: checkpoint %s%s, loaded in %llu us\n", r.key.c_str(),
                 r.path.c_str(), r.state.c_str(), r.saved ? " (parsed, saved)" : "",
                 static_cast<unsigned long long>(r.load_us));
  }
  return spare::Status::Ok();
}

// Commits what is left, waits (bounded) until it is durable so the last
// replies are released, writes them, and closes every client.
spare::Status Server::Shutdown() {
  close(listen_fd_);
  listen_fd_ = -1;
  spare::Status st;
  if (store_->mutations() != batch_mutations_ || read_barrier_) st = Commit();
  if (st.ok() && protected_) {
    const int64_t deadline = NowMs(CLOCK_MONOTONIC) + 2000;
    while (st.ok() && rt_.commit_deferred() && NowMs(CLOCK_MONOTONIC) < deadline) {
      usleep(1000);
      st = Commit();
    }
    if (st.ok() && !rt_.commit_deferred()) st = rt_.wait_durable(state_epoch_, 2000);
  }
  for (auto& c : conns_) {
    if (c == nullptr || c->dead) continue;
    (void)rt_.gate().flush(c->fd);
    Close(c.get());
  }
  closed_.clear();
  std::fprintf(stderr, "spare-kv: stopped at epoch %llu (durable %llu)%s%s\n",
               static_cast<unsigned long long>(rt_.epoch()),
               static_cast<unsigned long long>(rt_.durable_epoch()), st.ok() ? "" : ": ",
               st.ok() ? "" : st.ToString().c_str());
  return st;
}

void Server::AppendInfo(std::string_view section, std::string* out) {
  if (section == "server") {
    Field(out, "redis_version", "7.0.0");
    Field(out, "spare_kv_version", "0.1.0");
    Field(out, "redis_mode", "standalone");
    Field(out, "process_id", static_cast<uint64_t>(getpid()));
    Field(out, "tcp_port", static_cast<uint64_t>(options_.port));
    Field(out, "uptime_in_seconds",
          static_cast<uint64_t>((NowMs(CLOCK_MONOTONIC) - start_ms_) / 1000));
  } else if (section == "clients") {
    Field(out, "connected_clients", clients_);
    Field(out, "maxclients", options_.max_clients);
  } else if (section == "stats") {
    Field(out, "total_connections_received", connections_total_);
    Field(out, "rejected_connections", rejected_);
    Field(out, "total_net_input_bytes", input_bytes_);
    Field(out, "protocol_errors", protocol_errors_);
    Field(out, "batches", batches_);
    Field(out, "read_only_batches", read_only_batches_);
  } else if (section == "spare") {
    const spare::RuntimeStats rs = rt_.stats();
    Field(out, "mode", protected_ ? "protected" : "unprotected");
    Field(out, "instance", rt_.instance_id());
    Field(out, "epoch", rt_.epoch());
    Field(out, "pending_epoch", rt_.pending_epoch());
    Field(out, "durable_epoch", rt_.durable_epoch());
    Field(out, "commit_deferred", rt_.commit_deferred() ? 1 : 0);
    Field(out, "resumed", rt_.resumed() ? 1 : 0);
    Field(out, "resumed_epoch", resumed_epoch_);
    Field(out, "tracker", rs.tracker.empty() ? "none" : rs.tracker);
    Field(out, "commits", rs.commits);
    Field(out, "deferred_commits", rs.deferred_commits);
    Field(out, "paced_commits", rs.paced_commits);
    Field(out, "backpressure_waits", rs.backpressure_waits);
    Field(out, "pages_committed", rs.pages_committed);
    Field(out, "bytes_committed", rs.bytes_committed);
    Field(out, "commit_avg_us", rs.commits ? rs.commit_ns_total / rs.commits / 1000 : 0);
    Field(out, "commit_max_us", rs.commit_ns_max / 1000);
    // Totals, so a benchmark can split each commit (difference two INFOs
    // and divide by the commits between them).
    Field(out, "commit_us_total", rs.commit_ns_total / 1000);
    Field(out, "commit_collect_us_total", rs.collect_ns_total / 1000);
    Field(out, "commit_copy_us_total", rs.copy_ns_total / 1000);
    Field(out, "commit_handover_us_total", rs.handover_ns_total / 1000);
    Field(out, "commit_drop_us_total", rs.drop_ns_total / 1000);
    Field(out, "ranges_committed", rs.ranges_committed);
    Field(out, "writes", options_.declared_writes ? "declared" : "pages");
    Field(out, "declare_calls", rs.declare_calls);
    Field(out, "bytes_declared", rs.bytes_declared);
    Field(out, "pages_verified", rs.pages_verified);
    Field(out, "pages_dropped", rs.pages_dropped);
    Field(out, "pages_dropped_idle", rs.pages_dropped_idle);
    Field(out, "drop_refaults", rs.drop_refaults);
    Field(out, "drop_window_ms", rs.drop_window_ms);
    Field(out, "idle_drop_passes", rs.idle_drop_passes);
    Field(out, "idle_drop_us_total", rs.idle_drop_ns_total / 1000);
    Field(out, "idle_drop_max_us", rs.idle_drop_ns_max / 1000);
    Field(out, "exit_helper_pid", static_cast<uint64_t>(rs.exit_helper_pid));
    Field(out, "outputs_released", rs.outputs_released);
    Field(out, "held_outputs", rt_.gate().held_outputs());
    Field(out, "held_bytes", rt_.gate().held_bytes());
    Field(out, "region_bytes", options_.region_size);
    Field(out, "arena_footprint_bytes", arena_->footprint_bytes());
  } else if (section == "checkpoint") {
    AppendCheckpointInfo(out);
  }
}

// Per configuration checkpoint key: what this start found and did.
void Server::AppendCheckpointInfo(std::string* out) const {
  uint64_t hits = 0, stale = 0, missing = 0;
  std::string keys;
  for (const CheckpointReport& r : options_.checkpoints) {
    hits += r.state == "hit";
    stale += r.state == "stale";
    missing += r.state == "missing";
    keys += (keys.empty() ? "" : ",") + r.key;
  }
  Field(out, "checkpoint_keys", keys);
  Field(out, "checkpoint_hits", hits);
  Field(out, "checkpoint_stale", stale);
  Field(out, "checkpoint_missing", missing);
  for (const CheckpointReport& r : options_.checkpoints) {
    char fp[24];
    std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(r.fingerprint));
    Field(out, r.key + "_file", r.path);
    Field(out, r.key + "_state", r.state);
    Field(out, r.key + "_fingerprint", fp);
    Field(out, r.key + "_file_bytes", r.file_bytes);
    Field(out, r.key + "_load_us", r.load_us);
    Field(out, r.key + "_saved", r.saved ? 1 : 0);
  }
}

}  // namespace kv
