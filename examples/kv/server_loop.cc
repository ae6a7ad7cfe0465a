// server_loop.cc — the event loop: accept, read, execute, gate, commit.
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "server.h"
#include "server_conn.h"

namespace kv {
namespace {

constexpr int kDeferredCommitMs = 2;
constexpr size_t kSweepSlots = 4096;
constexpr size_t kCronResizeSlots = 1 << 16;
constexpr size_t kReadChunk = 64 * 1024;

int64_t Us(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1000;
}

}  // namespace

spare::Status Server::Run() {
  const int64_t mono = Us(CLOCK_MONOTONIC);
  last_commit_us_ = mono;
  next_cron_us_ = mono + CronUs();
  epoll_event events[256];
  while (!stop_) {
    int n = epoll_wait(epoll_fd_, events, 256, Timeout());
    if (n < 0 && errno != EINTR) return spare::Status::FromErrno("epoll_wait", errno);
    now_ms_ = Us(CLOCK_REALTIME) / 1000;
    bool runtime_ready = false;
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      const uint32_t ev = events[i].events;
      if (fd == listen_fd_) {
        Accept();
      } else if (fd == signal_fd_) {
        signalfd_siginfo si;
        if (read(signal_fd_, &si, sizeof si) == sizeof si) {
          std::fprintf(stderr, "spare-kv: signal %u, shutting down\n", si.ssi_signo);
        }
        stop_ = true;
      } else if (fd == rt_.fd()) {
        runtime_ready = true;
      } else if (static_cast<size_t>(fd) < conns_.size() && conns_[fd] != nullptr) {
        Conn* c = conns_[fd].get();
        if (ev & (EPOLLHUP | EPOLLERR)) {  // reset or fully shut: nobody to answer
          Close(c);
          continue;
        }
        if ((ev & EPOLLOUT) && !rt_.gate().flush(fd).ok()) {
          Close(c);
          continue;
        }
        if (ev & EPOLLIN) Read(c);
      }
    }
    size_t budget = options_.max_batch == 0 ? SIZE_MAX : options_.max_batch;
    std::vector<Conn*> again;
    for (Conn* c : runnable_) {
      c->in_runnable = false;
      if (c->dead) continue;
      Execute(c, &budget);
      if (c->in_runnable) again.push_back(c);
    }
    runnable_.swap(again);
    SPARE_RETURN_IF_ERROR(checkpoint_error_);
    if (Us(CLOCK_MONOTONIC) >= next_cron_us_) Cron(now_ms_);
    SendReplies();
    if (runtime_ready) SPARE_RETURN_IF_ERROR(rt_.poll().With("runtime poll"));
    SPARE_RETURN_IF_ERROR(MaybeCommit());
    Settle();
    closed_.clear();
  }
  return Shutdown();
}

int Server::Timeout() const {
  if (!runnable_.empty()) return 0;
  const int64_t now = Us(CLOCK_MONOTONIC);
  int64_t deadline = next_cron_us_;
  if (rt_.commit_deferred()) {
    deadline = std::min(deadline, last_commit_us_ + kDeferredCommitMs * 1000);
  }
  if (dirty_since_us_ != 0) {
    deadline = std::min(deadline, dirty_since_us_ + static_cast<int64_t>(options_.group_commit_us));
  }
  return static_cast<int>(std::max<int64_t>(0, (deadline - now + 999) / 1000));
}

void Server::Cron(int64_t now_ms) {
  if (accept_paused_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listen_fd_;
    accept_paused_ = epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0;
  }
  next_cron_us_ = Us(CLOCK_MONOTONIC) + CronUs();
  store_->SweepExpired(now_ms, kSweepSlots);
  store_->ResizeStep(kCronResizeSlots);
}

void Server::Accept() {
  while (true) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of fds: stop accepting until the next cron tick rather than
        // spin on a listening socket that stays readable.
        std::fprintf(stderr, "spare-kv: accept: %s; pausing accepts for %lld ms\n", strerror(errno),
                     static_cast<long long>(CronUs() / 1000));
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        accept_paused_ = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        std::fprintf(stderr, "spare-kv: accept: %s\n", strerror(errno));
      }
      return;
    }
    ++connections_total_;
    if (clients_ >= options_.max_clients) {
      static const char kFull[] = "-ERR max number of clients reached\r\n";
      (void)!send(fd, kFull, sizeof kFull - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd);
      ++rejected_;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      close(fd);
      continue;
    }
    if (static_cast<size_t>(fd) >= conns_.size()) conns_.resize(fd + 1);
    conns_[fd] = std::make_unique<Conn>(fd, options_.limits);
    ++clients_;
  }
}

void Server::Read(Conn* c) {
  if (c->closing || c->read_closed) return;
  // Drain what is there, a bounded amount per batch (fairness).
  for (size_t total = 0; total < 16 * kReadChunk;) {
    if (!c->Reserve(kReadChunk / 4, options_.max_query_buffer + kReadChunk)) {
      std::fprintf(stderr, "spare-kv: closing client fd %d: query buffer over %zu bytes\n", c->fd,
                   options_.max_query_buffer);
      Close(c);
      return;
    }
    size_t room = c->cap - c->end;
    ssize_t n = read(c->fd, c->buf.get() + c->end, room);
    if (n > 0) {
      c->end += n;
      total += n;
      input_bytes_ += n;
      if (static_cast<size_t>(n) < room) break;  // drained
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      Close(c);
      return;
    }
    // EOF: serve what was sent, then close once the replies are out.
    c->read_closed = true;
    SetWantWrite(c, c->want_write);  // drops EPOLLIN
    if (!c->in_watch) {
      c->in_watch = true;
      watch_.push_back(c);
    }
    break;
  }
  if (c->end > c->start && !c->in_runnable) {
    c->in_runnable = true;
    runnable_.push_back(c);
  }
}

// Parses and runs c's complete requests, within *budget. Leaves c in
// runnable_ (in_runnable) if the budget ran out first.
void Server::Execute(Conn* c, size_t* budget) {
  auto touch = [&] {
    if (!c->in_touched) {
      c->in_touched = true;
      touched_.push_back(c);
    }
  };
  while (!c->closing && c->end > c->start) {
    if (*budget == 0) {
      c->in_runnable = true;
      return;
    }
    ParseResult r = c->parser.Parse(c->input());
    if (r.state == ParseState::kNeedMore) break;
    if (r.state == ParseState::kError) {
      ++protocol_errors_;
      AppendError(&c->out, r.error);
      touch();
      if (r.fatal) {
        // No way to find the next request: reply, then close (like Redis).
        c->closing = true;
        c->start = c->end = 0;
        SetWantWrite(c, c->want_write);  // drops EPOLLIN
        break;
      }
      c->start += r.consumed;
      continue;
    }
    const auto& args = c->parser.args();
    if (!args.empty()) {
      --*budget;
      ++uncommitted_requests_;
      touch();
      if (commands_->Execute(args, now_ms_, &c->out, &c->session)) {
        c->closing = true;
        SetWantWrite(c, c->want_write);
      }
    }
    c->start += r.consumed;  // after Execute: args point into the buffer
  }
  if (c->start == c->end) c->start = c->end = 0;
}

// Hands the batch's replies to the gate. If the store has changes not yet
// committed (from this batch or an earlier one waiting for group commit),
// they depend on the next epoch; otherwise on the state of the last commit
// (released at once if that is durable: no empty epoch for reads).
// Unprotected, the gate releases everything at once (epoch 0).
void Server::SendReplies() {
  const bool wrote = store_->mutations() != batch_mutations_;
  if (wrote && dirty_since_us_ == 0) dirty_since_us_ = Us(CLOCK_MONOTONIC);
  if (touched_.empty()) return;
  ++batches_;
  if (!wrote) ++read_only_batches_;
  // Under policy hot a read's reply waits for an epoch committed after it
  // (Runtime::reads_wait_for_epoch: a replacement may own the instance
  // already); the next commit is due as if the batch had written.
  if (!wrote && protected_ && rt_.reads_wait_for_epoch() && !read_barrier_) {
    read_barrier_ = true;
    if (dirty_since_us_ == 0) dirty_since_us_ = Us(CLOCK_MONOTONIC);
  }
  const bool dirty = wrote || read_barrier_;
  const uint64_t epoch = !protected_ ? 0 : dirty ? rt_.pending_epoch() : state_epoch_;
  if (dirty) held_epoch_ = epoch;
  for (Conn* c : touched_) {
    c->in_touched = false;
    if (c->dead) continue;
    const bool written = rt_.gate().send(c->fd, c->out, epoch).ok();
    c->out.clear();
    if (!written) {  // the client is gone (reset or closed): nobody to answer
      Close(c);
      continue;
    }
    c->last_epoch = epoch;
    if (!c->in_watch) {
      c->in_watch = true;
      watch_.push_back(c);
    }
  }
  touched_.clear();
}

// Commits the store's changes. Group commit: while an epoch is in flight
// the next one gathers more batches, until that epoch is durable, the group
// window passes or max_batch requests wait; fewer, fuller epochs cost less
// than many small ones and the replies would wait for the in-flight epoch
// anyway.
spare::Status Server::MaybeCommit() {
  const int64_t now = Us(CLOCK_MONOTONIC);
  const bool dirty = store_->mutations() != batch_mutations_ || read_barrier_;
  // A deferred commit (staging full, or merged by pacing behind an epoch
  // in flight) is retried when nothing is in flight any more, or after
  // kDeferredCommitMs at the latest.
  const bool deferred_due =
      rt_.commit_deferred() && (now >= last_commit_us_ + kDeferredCommitMs * 1000 ||
                                rt_.epoch() == rt_.durable_epoch());
  if (!dirty && !deferred_due) return spare::Status::Ok();
  if (dirty && !deferred_due && protected_ && rt_.epoch() > rt_.durable_epoch() &&
      now < dirty_since_us_ + static_cast<int64_t>(options_.group_commit_us) &&
      (options_.max_batch == 0 || uncommitted_requests_ < options_.max_batch)) {
    return spare::Status::Ok();
  }
  return Commit();
}

spare::Status Server::Commit() {
  char record[96];
  int n = std::snprintf(record, sizeof record, "spare-kv commands=%llu keys=%llu",
                        static_cast<unsigned long long>(commands_->stats().commands),
                        static_cast<unsigned long long>(store_->size()));
  auto e = rt_.commit(std::string_view(record, static_cast<size_t>(n)));
  if (!e.ok()) return e.status().With("commit");
  state_epoch_ = *e;
  if (protected_ && held_epoch_ != 0 && state_epoch_ != held_epoch_) {
    return spare::Status(spare::Code::kInternal,
                         "commit assigned epoch " + std::to_string(state_epoch_) +
                             " to replies sent under epoch " + std::to_string(held_epoch_));
  }
  held_epoch_ = 0;
  read_barrier_ = false;
  batch_mutations_ = store_->mutations();
  last_commit_us_ = Us(CLOCK_MONOTONIC);
  dirty_since_us_ = 0;
  uncommitted_requests_ = 0;
  return spare::Status::Ok();
}

// Finds out which clients have all their replies written: stops watching
// them for EPOLLOUT and closes those that asked to be closed.
void Server::Settle() {
  const uint64_t durable = rt_.gate().durable_epoch();
  size_t keep = 0;
  for (Conn* c : watch_) {
    if (c->dead) continue;
    bool settled = false;
    if (c->last_epoch > durable) {
      // held by the gate
    } else if (rt_.gate().wants_write(c->fd)) {
      SetWantWrite(c, true);
    } else {
      SetWantWrite(c, false);
      settled = true;
    }
    if (settled && (c->closing || (c->read_closed && !c->in_runnable))) {
      Close(c);
      continue;
    }
    if (settled) {
      c->in_watch = false;
    } else {
      watch_[keep++] = c;
    }
  }
  watch_.resize(keep);
}

// Registers what c waits for: input unless it is closing, output while the
// gate has released bytes the socket did not take.
void Server::SetWantWrite(Conn* c, bool on) {
  c->want_write = on;
  uint32_t events =
      (c->closing || c->read_closed ? 0u : uint32_t{EPOLLIN}) | (on ? uint32_t{EPOLLOUT} : 0u);
  if (events == c->events) return;
  c->events = events;
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = c->fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev);
}

void Server::Close(Conn* c) {
  if (c->dead) return;
  c->dead = true;
  rt_.gate().forget(c->fd);  // before close: the fd number will be reused
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  close(c->fd);
  --clients_;
  closed_.push_back(std::move(conns_[c->fd]));
}

}  // namespace kv
