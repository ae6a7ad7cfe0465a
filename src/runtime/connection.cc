// The instance's side of the agent protocol (docs/WIRE.md): attach,
// requests, Released and Durable, and reattaching after the agent restarts.
#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "ipc/body.h"
#include "region/mapping.h"
#include "runtime/runtime_impl.h"

namespace spare {
namespace {

constexpr auto kReconnectEvery = std::chrono::milliseconds(20);

Status EpollAdd(int epfd, int fd) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) return Status::FromErrno("epoll_ctl", errno);
  return Status::Ok();
}

}  // namespace

// Connects and sends Attach. A first attach learns the staging area and
// the resume point; a reattach (after the agent restarted) hands the agent
// back every fd it owns, then re-sends the epochs still in flight.
Status RuntimeImpl::Connect(bool reattach) {
  SPARE_ASSIGN_OR_RETURN(UniqueFd sock, ipc::Connect(agent_dir_ + "/agent.sock"));
  sock_ = std::move(sock);
  ipc::Message m;
  m.type = ipc::MsgType::kAttach;
  m.generation = generation_;
  m.body = {{"id", id_},
            {"pid", static_cast<int64_t>(::getpid())},
            {"reattach", reattach},
            {"tracker", std::string(tracker_->name())},
            {"durable_epoch", durable_},
            {"released_epoch", released_}};
  if (reattach) {
    m.blob = released_record_;  // the image holds every released epoch
    m.fds.emplace_back(::dup(staging_fd_.get()));
    for (auto& r : regions_) m.fds.emplace_back(::dup(r.memfd.get()));
  }
  connected_ = true;  // Request() needs it
  auto reply = Request(std::move(m));
  if (!reply.ok()) {
    connected_ = false;
    sock_.reset();
    return reply.status().With("attaching to the agent at " + agent_dir_);
  }
  SPARE_RETURN_IF_ERROR(EpollAdd(epfd_.get(), sock_.get()));
  if (reattach) {
    for (const InFlight& f : in_flight_) {  // the new agent never saw these
      ipc::Message c;
      c.type = ipc::MsgType::kCommit;
      c.generation = generation_;
      c.body = {{"epoch", f.epoch}, {"first_slot", f.first_slot}, {"parts", f.parts}};
      SPARE_RETURN_IF_ERROR(ipc::Send(sock_.get(), c));
    }
    return Status::Ok();
  }
  ipc::Body b(reply->body, "agent's answer to Attach");
  SPARE_ASSIGN_OR_RETURN(generation_, b.Uint("generation"));
  SPARE_ASSIGN_OR_RETURN(epoch_, b.Uint("epoch"));
  SPARE_ASSIGN_OR_RETURN(uint64_t count, b.Uint("slot_count"));
  SPARE_ASSIGN_OR_RETURN(uint64_t size, b.Uint("slot_size"));
  SPARE_ASSIGN_OR_RETURN(std::string policy, b.String("policy", "local"));
  reads_wait_ = policy == "hot";
  if (reply->fds.size() != 1)
    return Status(Code::kBadMessage, "agent's answer to Attach lacks the staging fd");
  size_t bytes = epoch::StagingBytes(static_cast<uint32_t>(count), size);
  staging_fd_ = std::move(reply->fds[0]);
  SPARE_ASSIGN_OR_RETURN(void* base, region::MapShared(staging_fd_.get(), bytes, true));
  SPARE_ASSIGN_OR_RETURN(staging_, epoch::OpenStaging(static_cast<std::byte*>(base), bytes));
  durable_ = released_ = epoch_;
  resumed_ = epoch_ > 0;
  record_ = std::move(reply->blob);
  released_record_ = record_;
  (void)gate_.release(durable_);
  gate_.set_pending_epoch(epoch_ + 1);
  return Status::Ok();
}

void RuntimeImpl::Disconnected(const Status& why) {
  if (!connected_) return;
  connected_ = false;
  if (sock_.valid()) epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, sock_.get(), nullptr);
  sock_.reset();
  next_reconnect_ = {};  // the first try is immediate
  std::fprintf(stderr, "spare: lost the agent (%s); outputs are held until it is back\n",
               why.ToString().c_str());
  itimerspec its{};
  its.it_interval.tv_nsec = its.it_value.tv_nsec =
      std::chrono::nanoseconds(kReconnectEvery).count();
  timerfd_settime(timer_.get(), 0, &its, nullptr);
}

Status RuntimeImpl::TryReconnect() {
  if (connected_) return Status::Ok();
  auto now = std::chrono::steady_clock::now();
  if (now < next_reconnect_) return Status::Ok();
  next_reconnect_ = now + kReconnectEvery;
  Status st = Connect(/*reattach=*/true);
  if (st.code() == Code::kUnavailable) return Status::Ok();  // not back yet
  if (!st.ok()) return st;
  itimerspec off{};
  timerfd_settime(timer_.get(), 0, &off, nullptr);
  std::fprintf(stderr, "spare: reattached to the agent at epoch %llu\n",
               static_cast<unsigned long long>(durable_));
  return Status::Ok();
}

// Sends `request` and waits for its Ok/Error, handling Released and
// Durable meanwhile.
Result<ipc::Message> RuntimeImpl::Request(ipc::Message request, int timeout_ms) {
  if (!connected_) return Status(Code::kUnavailable, "the agent is not reachable");
  const char* what = ipc::MsgTypeName(request.type);
  Status st = ipc::Send(sock_.get(), request);
  if (!st.ok()) return st.With(what);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return Status(Code::kUnavailable, std::string("no answer to ") + what + " from the agent");
    pollfd p{sock_.get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
    if (n <= 0) continue;
    auto msg = ipc::Receive(sock_.get(), /*dont_wait=*/true);
    if (!msg.ok()) return msg.status().With(what);
    if (!msg->has_value()) continue;
    ipc::Message& m = **msg;
    if (m.type == ipc::MsgType::kOk || m.type == ipc::MsgType::kError) {
      SPARE_RETURN_IF_ERROR(ipc::StatusOf(m).With(std::string("agent refused ") + what));
      return std::move(m);
    }
    SPARE_RETURN_IF_ERROR(Handle(std::move(m)));
  }
}

Status RuntimeImpl::Handle(ipc::Message msg) {
  auto epoch = ipc::Body(msg.body, ipc::MsgTypeName(msg.type)).Uint("epoch");
  uint64_t e = epoch.ok() ? *epoch : 0;
  switch (msg.type) {
    case ipc::MsgType::kReleased:
    case ipc::MsgType::kDurable:
      if (!epoch.ok() || e > epoch_)
        return Status(Code::kBadMessage, std::string(ipc::MsgTypeName(msg.type)) + " names epoch " +
                                             std::to_string(e) + " but only " +
                                             std::to_string(epoch_) + " were handed over");
      if (msg.type == ipc::MsgType::kReleased) {
        OnReleased(e);
      } else {
        OnDurable(e);
      }
      return Status::Ok();
    case ipc::MsgType::kError:  // only commits are answered out of band
      return ipc::StatusOf(msg).With("the agent refused epoch " + std::to_string(e));
    default:
      return Status(Code::kBadMessage,
                    std::string("unexpected ") + ipc::MsgTypeName(msg.type) + " from the agent");
  }
}

// The agent has what it needs from the slots of every epoch <= e: they are
// ours again. Outputs still wait for Durable.
void RuntimeImpl::OnReleased(uint64_t e) {
  while (!in_flight_.empty() && in_flight_.front().epoch <= e) {
    InFlight& f = in_flight_.front();
    busy_ -= f.parts;
    unconfirmed_.push_back({f.epoch, std::move(f.record)});
    in_flight_.pop_front();
  }
  if (e > released_) {
    released_ = e;
    for (const Unconfirmed& u : unconfirmed_)
      if (u.epoch == e) released_record_ = u.record;
  }
  stats_.releases++;
}

// Every epoch <= e is durable: its outputs may leave. Durable implies
// Released (the agent sends released >= durable), so an epoch still in
// flight is released here too.
void RuntimeImpl::OnDurable(uint64_t e) {
  if (e > released_) OnReleased(e);
  while (!unconfirmed_.empty() && unconfirmed_.front().epoch <= e) {
    record_ = std::move(unconfirmed_.front().record);
    unconfirmed_.pop_front();
  }
  if (e > durable_) durable_ = e;
  stats_.durables++;
  // A failed write only means that client is gone; it sees so on read.
  (void)gate_.release(durable_);
  stats_.outputs_released = gate_.released_outputs();
}

Status RuntimeImpl::Drain() {
  if (!connected_) {
    uint64_t ticks;
    while (::read(timer_.get(), &ticks, sizeof(ticks)) > 0) {
    }
    return TryReconnect();
  }
  for (;;) {
    auto msg = ipc::Receive(sock_.get(), /*dont_wait=*/true);
    if (!msg.ok()) {
      if (msg.status().code() != Code::kUnavailable) return msg.status();
      Disconnected(msg.status());
      return Status::Ok();
    }
    if (!msg->has_value()) return Status::Ok();
    SPARE_RETURN_IF_ERROR(Handle(std::move(**msg)));
  }
}

// Waits on the socket and the reconnect timer, not on epfd_: epfd_ also
// holds the drop timer, which only poll() clears, so a wait on it would
// spin once that timer is due.
Status RuntimeImpl::WaitEvent(int timeout_ms) {
  pollfd p[2] = {{sock_.valid() ? sock_.get() : -1, POLLIN, 0}, {timer_.get(), POLLIN, 0}};
  int n = ::poll(p, 2, timeout_ms);
  if (n < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
  return Drain();
}

}  // namespace spare
