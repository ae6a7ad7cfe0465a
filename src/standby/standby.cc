// Standby (standby/standby.h): reserved areas and the apply of committed
// epochs.
#include "standby/standby.h"

#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/fault.h"
#include "common/files.h"
#include "common/hex.h"
#include "ipc/wire.h"
#include "region/mapping.h"

namespace spare::standby {

namespace {
// SPARE_FAULT=standby-mid-apply:N (common/fault.h): the standby is killed
// right after its Nth write into a replica, with the rest of that epoch
// (when it has more writes) not written.
const epoch::WriteFn* MidApplyFault() {
  static const epoch::WriteFn fn = [](int fd, const void* buf, size_t n, off_t at) {
    const ssize_t w = ::pwrite(fd, buf, n, at);
    fault::At("standby-mid-apply");
    return w;
  };
  return fault::Armed("standby-mid-apply") ? &fn : nullptr;
}
}  // namespace

using hot::kAmId;

struct Standby::Peer {
  std::unique_ptr<net::Endpoint> ep;
  std::string agent;  // from Hello
  bool hello = false;
  bool suspected = false;
  std::chrono::steady_clock::time_point last_heard{};
  // Not suspected before this: it announced bytes it is putting, and its
  // messages queue behind them (Heartbeat.inflight_bytes).
  std::chrono::steady_clock::time_point quiet_until{};
  std::chrono::steady_clock::time_point hello_at{};  // its Hello arrived
  uint64_t heartbeats_sent = 0, heard = 0;
};

// An area's memory: the replica memfds and their mappings, the staging
// area. Shared with the apply jobs on the worker (common/worker.h), so an
// area freed on the loop (Retire, handover) never unmaps memory a job is
// still reading or writing.
struct Replica {
  std::vector<UniqueFd> region_fds;
  std::vector<epoch::RegionTarget> targets;
  UniqueFd staging_fd;
  epoch::StagingView view;
  // The epoch wholly written into the replica; the apply worker's alone
  // once the area exists (jobs run one at a time, in order).
  uint64_t applied = 0;

  ~Replica() {
    if (view.base) ::munmap(view.base, view.size);
    for (const auto& t : targets)
      if (t.map) ::munmap(t.map, t.size);
  }
};

struct Standby::Area {
  std::string id;
  uint64_t handle = 0;
  uint64_t generation = 0;
  uint64_t epoch = 0;   // the replica holds exactly this epoch (applies completed)
  uint64_t queued = 0;  // newest epoch posted to the apply worker
  uint32_t applying = 0;  // apply jobs posted, completions not yet run
  std::string record;
  std::string spec;
  Peer* owner = nullptr;   // the connection that reserved it (null: gone)
  std::string owner_agent;  // its Hello name
  // Since when owner_agent owns it (its Hello or Reserve): a death of that
  // agent's liveness connection before this was an earlier process's.
  std::chrono::steady_clock::time_point owner_since{};
  // When owner is null: when the owner was last heard (its silence counts on).
  std::chrono::steady_clock::time_point orphan_heard{};
  bool fenced = false;  // failed over: nothing about it is accepted any more
  bool torn = false;    // an apply failed midway: the replica is between epochs
  // A full copy is replacing the replica (Copy .. CopyDone): it holds no
  // epoch, takes no Commit and cannot be handed over; the replica regions
  // are registered for the agent's puts meanwhile.
  bool copying = false;
  bool said_unreplaceable = false;  // its owner's silence was logged once
  uint64_t copy_epoch = 0;
  std::chrono::steady_clock::time_point copy_started{};
  std::vector<std::unique_ptr<net::Memory>> copy_mems;
  // Leaving: the owner is restarting; not suspected until then.
  std::chrono::steady_clock::time_point grace_until{};
  // Fenced with applies still running: the handover waits for them, so the
  // replica handed over is never between two epochs.
  std::optional<size_t> handover_pending;  // index into failovers_
  std::shared_ptr<Replica> rep;
  std::unique_ptr<net::Memory> mem;  // the staging registration (loop thread)

  ~Area() {  // unregister before the mappings can go
    copy_mems.clear();
    mem.reset();
  }
};

// A handover in flight: the Takeover sent to the spare host's agent, its
// answer awaited (it comes when the replacement has attached).
struct Standby::Handover {
  UniqueFd sock;
  uint64_t handle = 0;
  size_t failover = 0;  // index into failovers_
  std::chrono::steady_clock::time_point fenced_at{};
};

namespace {
double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

constexpr int kStateVersion = 1;

Result<Tombstones> DecodeStandbyState(std::string_view text, const std::string& path) {
  auto bad = [&](const std::string& what) {
    return Status(Code::kBadMessage, path + ": " + what +
                                         " (fix or remove it; removing it forgets which owners "
                                         "were fenced)");
  };
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return bad("not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer())
    return bad("no integer \"version\"");
  if (j["version"] != kStateVersion)
    return bad("version " + j["version"].dump() + "; this standby reads version " +
               std::to_string(kStateVersion));
  if (!j.contains("tombstones") || !j["tombstones"].is_array()) return bad("no \"tombstones\" array");
  Tombstones out;
  for (size_t i = 0; i < j["tombstones"].size(); ++i) {
    const auto& t = j["tombstones"][i];
    const std::string at = "tombstones[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("id") || !t["id"].is_string() || t["id"].get<std::string>().empty() ||
        !t.contains("generation") || !t["generation"].is_number_unsigned() ||
        !t.contains("owner") || !t["owner"].is_string())
      return bad(at + " needs a non-empty string id, an unsigned generation and a string owner");
    if (!out.emplace(t["id"].get<std::string>(),
                     Tombstone{t["generation"].get<uint64_t>(), t["owner"].get<std::string>()})
             .second)
      return bad(at + ": instance " + t["id"].dump() + " appears twice");
  }
  return out;
}

std::string EncodeStandbyState(const std::string& name, const Tombstones& tombstones) {
  nlohmann::json tombs = nlohmann::json::array();
  for (const auto& [id, t] : tombstones)
    tombs.push_back({{"id", id}, {"generation", t.generation}, {"owner", t.owner}});
  const nlohmann::json j = {{"version", kStateVersion}, {"name", name}, {"tombstones", tombs}};
  return j.dump(2) + "\n";
}

Status Standby::LoadState() {
  SPARE_RETURN_IF_ERROR(MakeDirs(options_.dir));
  const std::string path = options_.dir + "/standby.json";
  SPARE_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadFile(path));
  if (!text) return Status::Ok();
  SPARE_ASSIGN_OR_RETURN(tombstones_, DecodeStandbyState(*text, path));
  spdlog::info("standby: state from {}: {} fenced instance(s) stay fenced", path,
               tombstones_.size());
  return Status::Ok();
}

void Standby::SaveState() {
  if (options_.dir.empty()) return;
  Status st = WriteFileAtomic(options_.dir + "/standby.json",
                              EncodeStandbyState(options_.name, tombstones_), 0644,
                              Durability::kPowerLoss);
  if (!st.ok())
    spdlog::error("standby: saving its state failed: {}; a restart would forget which owners "
                  "it fenced",
                  st.ToString());
}

Result<std::unique_ptr<Standby>> Standby::Create(StandbyOptions options) {
  std::unique_ptr<Standby> s(new Standby());
  s->options_ = std::move(options);
  if (s->options_.heartbeat_ms == 0 || s->options_.timeout_ms <= s->options_.heartbeat_ms)
    return Status(Code::kInvalidArgument,
                  "heartbeat " + std::to_string(s->options_.heartbeat_ms) + " ms and timeout " +
                      std::to_string(s->options_.timeout_ms) +
                      " ms: need 0 < heartbeat < timeout");
  if (!s->options_.dir.empty()) SPARE_RETURN_IF_ERROR(s->LoadState());
  // A restarted standby takes its address back at once, whatever
  // connections of its previous life linger in TIME_WAIT (unless the
  // operator set it otherwise).
  ::setenv("UCX_TCP_CM_REUSEADDR", "y", /*overwrite=*/0);
  SPARE_ASSIGN_OR_RETURN(s->worker_, net::Worker::Create());
  SPARE_ASSIGN_OR_RETURN(s->applier_, Worker::Create("standby-apply"));
  s->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  s->timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!s->epoll_.valid() || !s->timer_.valid())
    return Status::FromErrno("epoll/timerfd for the standby", errno);
  itimerspec its{};
  its.it_interval.tv_nsec = static_cast<long>(s->options_.heartbeat_ms % 1000) * 1'000'000;
  its.it_interval.tv_sec = s->options_.heartbeat_ms / 1000;
  its.it_value = its.it_interval;
  ::timerfd_settime(s->timer_.get(), 0, &its, nullptr);
  hot::LiveServer::Options live;
  live.host = s->options_.host;
  live.port = s->options_.live_port;
  live.heartbeat_ms = s->options_.heartbeat_ms;
  // A loop this late stops the beats (agents see the standby silent).
  live.stall = std::chrono::milliseconds(std::max<uint32_t>(1000, 10 * s->options_.timeout_ms));
  live.max_connections = 8 * s->options_.max_instances;
  SPARE_ASSIGN_OR_RETURN(s->live_, hot::LiveServer::Create(live, &s->pulse_));
  for (int fd : {s->worker_->event_fd(), s->timer_.get(), s->applier_->notify_fd(),
                 s->live_->event_fd()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(s->epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      return Status::FromErrno("epoll_ctl", errno);
  }
  Standby* raw = s.get();
  SPARE_RETURN_IF_ERROR(s->worker_->SetAmHandler(
      kAmId, [raw](net::Endpoint* from, std::span<const std::byte> b) { raw->OnMessage(from, b); }));
  SPARE_ASSIGN_OR_RETURN(
      s->port_, s->worker_->Listen(s->options_.host, s->options_.port, s->options_.error_mode,
                                   [raw](std::unique_ptr<net::Endpoint> ep) {
                                     raw->OnAccept(std::move(ep));
                                   }));
  return s;
}

Standby::~Standby() {
  live_.reset();  // its thread first: it reads pulse_
  handovers_.clear();
  applier_.reset();  // runs the jobs still queued; their completions are dropped
  areas_.clear();  // their registrations, before the worker goes
  peers_.clear();
}

void Standby::Progress() {
  pulse_.Tick();
  worker_->Progress();  // what arrived first: a late heartbeat is not silence
  if (applier_->RunCompletions() > 0) worker_->Progress();  // the Acks out
  uint64_t ticks = 0;
  if (::read(timer_.get(), &ticks, sizeof(ticks)) == sizeof(ticks)) {
    OnTimer();
    worker_->Progress();  // the heartbeats out
  }
  if (uint64_t n; ::read(live_->event_fd(), &n, sizeof(n)) == sizeof(n)) {
    OnTimer();  // an agent's process is gone: judge now, not at the next tick
    worker_->Progress();
  }
  PollHandovers();
}

// Heartbeats out, and silence in: an agent that said nothing (no message of
// any kind) for timeout_ms is suspected, and every area it owns fails over.
// An area whose owner's connection is gone counts its silence from when the
// owner was last heard.
void Standby::OnTimer() {
  const auto now = std::chrono::steady_clock::now();
  const auto timeout = std::chrono::milliseconds(options_.timeout_ms);
  // The standby itself stalled (stopped, starved) for longer than the
  // timeout: that was not the agents' silence. Everyone counts as heard
  // now, and is judged from here on.
  const auto since = now - last_tick_;
  // Only the loop late (a busy core) while the liveness thread ran on: the
  // beats it noted are true, so nobody needs excusing. The whole process
  // stopped: what arrived meanwhile has not been read yet.
  const bool stalled = last_tick_ != std::chrono::steady_clock::time_point{} && since > timeout &&
                       now - live_->last_run() > timeout;
  last_tick_ = now;
  if (stalled) {
    // Connections may not have survived the pause (UCX over TCP was seen to
    // wedge after half a second): agents get their reconnect window (they
    // reconnect after a second of silence) before anyone is judged.
    const auto grace = timeout + std::chrono::milliseconds(2000);
    spdlog::warn("standby: this process did not run for {} ms (more than the {} ms timeout); "
                 "its agents are not blamed for that: nobody is judged for the next {} ms",
                 std::chrono::duration_cast<std::chrono::milliseconds>(since).count(),
                 options_.timeout_ms,
                 std::chrono::duration_cast<std::chrono::milliseconds>(grace).count());
    for (auto& p : peers_) {
      p->last_heard = std::max(p->last_heard, now);
      p->quiet_until = std::max(p->quiet_until, now + grace);
    }
    for (auto& [h, a] : areas_) {
      a->orphan_heard = std::max(a->orphan_heard, now);
      a->grace_until = std::max(a->grace_until, now + grace);
    }
  }
  for (auto& p : peers_) {
    if (!p->hello || p->ep->failed()) continue;
    Send(p->ep.get(), hot::Type::kHeartbeat, 0, 0, p->heartbeats_sent++,
         hot::Body(hot::Heartbeat{static_cast<uint64_t>(
             std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch())
                 .count())}));
    const bool died = DiedSince(p->agent, p->hello_at);
    const bool silent =
        died || (now - Heard(p->agent, p->last_heard) > timeout && now > p->quiet_until);
    if (silent && !p->suspected) {
      p->suspected = true;
      ++suspicions_;
      const auto ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(now - p->last_heard).count();
      std::string ids;
      for (const auto& [h, a] : areas_)
        if (a->owner == p.get()) ids += (ids.empty() ? "" : ", ") + a->id;
      if (died)
        spdlog::warn("standby: agent {}'s liveness connection closed: its process is gone; "
                     "suspected; its instances ({}) fail over",
                     p->agent, ids.empty() ? "none" : ids);
      else
        spdlog::warn("standby: agent {} silent for {} ms (timeout {} ms): suspected; its "
                     "instances ({}) fail over",
                     p->agent, ms, options_.timeout_ms, ids.empty() ? "none" : ids);
    }
  }
  struct Due {
    Area* area;
    std::chrono::steady_clock::time_point heard;
    bool died;
  };
  std::vector<Due> due;
  for (auto& [h, a] : areas_) {
    if (a->fenced || now < a->grace_until) continue;
    auto heard = Heard(a->owner_agent, a->owner ? a->owner->last_heard : a->orphan_heard);
    const bool died = DiedSince(a->owner_agent, a->owner_since);
    heard = std::max(heard, a->grace_until);  // silence counts from the grace's end
    if (!died) {
      if (a->owner && now <= a->owner->quiet_until) continue;
      if (now - heard <= timeout) continue;
    }
    if (a->copying || a->torn) {
      // Nothing to fail over to: fencing would only stop the owner, who may
      // be alive (an agent restarting, a partition) and is the one copy of
      // the instance. It holds its outputs anyway until the replica is whole.
      if (!std::exchange(a->said_unreplaceable, true))
        spdlog::error("standby: agent {} silent for {} ms, but instance {} is not failed over: "
                      "its replica is {}; its owner is not fenced",
                      a->owner_agent, static_cast<int64_t>(MsBetween(heard, now)), a->id,
                      a->torn ? "torn (an apply failed midway)"
                              : "incomplete (a full copy is in progress)");
      continue;
    }
    due.push_back({a.get(), heard, died});
  }
  for (auto& [a, heard, died] : due)
    FailOver(*a, heard,
             died ? "its agent " + a->owner_agent +
                        "'s liveness connection closed without Leaving: the process is gone"
                  : "its agent " + a->owner_agent + " was silent for " +
                        std::to_string(static_cast<int64_t>(MsBetween(heard, now))) +
                        " ms (timeout " + std::to_string(options_.timeout_ms) + " ms)",
             died ? "close" : "silence");
}

std::chrono::steady_clock::time_point Standby::Heard(
    const std::string& agent, std::chrono::steady_clock::time_point ucx) const {
  auto live = live_->Get(agent);
  return live ? std::max(ucx, live->last_beat) : ucx;
}

bool Standby::DiedSince(const std::string& agent,
                        std::chrono::steady_clock::time_point since) const {
  auto live = live_->Get(agent);
  return live && live->died && live->died_at > since;
}

void Standby::FailOver(Area& a, std::chrono::steady_clock::time_point last_heard,
                       const std::string& why, const char* detected_by) {
  const auto suspected = std::chrono::steady_clock::now();
  FailoverView f;
  f.id = a.id;
  f.from = a.owner_agent;
  f.generation = a.generation + 1;
  f.epoch = a.epoch;
  f.detection_ms = MsBetween(last_heard, suspected);
  f.detected_by = detected_by;
  // Fence first: from here on nothing from the old owner is acknowledged.
  a.fenced = true;
  tombstones_[a.id] = {f.generation, a.owner_agent};
  SaveState();  // on disk before anything else happens: a restart keeps the fence
  fenced_handles_[a.handle] = a.id;
  if (a.owner)
    SendFenced(a.owner->ep.get(), hot::Header{hot::Type::kFenced, 0, a.handle, a.generation, 0},
               a.id);
  const auto fenced = std::chrono::steady_clock::now();
  f.fencing_ms = MsBetween(suspected, fenced);
  spdlog::warn("standby: instance {} fenced ({}): generation {} and below are refused; the "
               "replica is at epoch {}",
               a.id, why, a.generation, a.epoch);
  const size_t index = failovers_.size();
  failovers_.push_back(f);
  if (a.applying > 0) {
    a.handover_pending = index;  // OnCommit's completion hands it over
    return;
  }
  HandOver(a, index);
}

void Standby::HandOver(Area& a, size_t index) {
  a.handover_pending.reset();
  const FailoverView& f = failovers_[index];
  auto fail = [&](const Status& st) {
    failovers_[index].done = true;
    failovers_[index].result = st.ToString();
    spdlog::error("standby: instance {} NOT failed over: {}; its replica (epoch {}) is kept here",
                  a.id, st.ToString(), a.epoch);
  };
  if (a.torn)
    return fail(Status(Code::kTornImage, "its replica is torn (an apply failed midway)"));
  if (a.copying)
    return fail(Status(Code::kFailedPrecondition,
                       "its replica is incomplete: a full copy was in progress (epoch " +
                           std::to_string(a.copy_epoch) + "), so there is nothing to resume from"));
  if (options_.agent_dir.empty())
    return fail(Status(Code::kFailedPrecondition,
                       "the standby has no --agent to launch a replacement (start it with "
                       "--agent AGENT_DIR, the spare host's agent)"));
  auto spec = nlohmann::json::parse(a.spec, nullptr, /*allow_exceptions=*/false);
  if (!spec.is_object())
    return fail(Status(Code::kBadMessage, "its launch spec (from Reserve) is not a JSON object"));
  ipc::Message m;
  m.type = ipc::MsgType::kTakeover;
  m.generation = f.generation;
  m.body = {{"id", a.id},
            {"spec", spec},
            {"epoch", a.epoch},
            {"generation", f.generation},
            {"from", a.owner_agent},
            {"standby", options_.name},
            {"detection_ms", f.detection_ms},
            {"detected_by", f.detected_by},
            {"fencing_ms", f.fencing_ms}};
  m.blob = a.record;
  for (const auto& fd : a.rep->region_fds) m.fds.push_back(DupFd(fd.get()));
  auto sock = ipc::Connect(options_.agent_dir + "/agent.sock");
  if (!sock.ok()) return fail(sock.status().With("reaching the spare host's agent"));
  Status st = ipc::Send(sock->get(), m);
  if (!st.ok()) return fail(st.With("handing the replica to the spare host's agent"));
  auto h = std::make_unique<Handover>();
  h->sock = std::move(sock).value();
  h->handle = a.handle;
  h->failover = index;
  h->fenced_at = std::chrono::steady_clock::now();
  handovers_.push_back(std::move(h));
  spdlog::info("standby: instance {}: replica (epoch {}) handed to agent {} for generation {}",
               a.id, a.epoch, options_.agent_dir, f.generation);
}

void Standby::PollHandovers() {
  for (auto it = handovers_.begin(); it != handovers_.end();) {
    Handover& h = **it;
    auto got = ipc::Receive(h.sock.get(), /*dont_wait=*/true);
    if (got.ok() && !got->has_value()) {
      ++it;
      continue;
    }
    FailoverView& f = failovers_[h.failover];
    f.done = true;
    f.handover_ms = MsBetween(h.fenced_at, std::chrono::steady_clock::now());
    Status st = got.ok() ? ipc::StatusOf(**got) : got.status();
    if (st.ok()) {
      f.result = "ok";
      spdlog::info("standby: instance {} failed over to the spare host as generation {} at "
                   "epoch {}: detection {:.1f} ms (by {}), fencing {:.2f} ms, handover (launch "
                   "and first attach on the spare host) {:.1f} ms",
                   f.id, f.generation, f.epoch, f.detection_ms, f.detected_by, f.fencing_ms,
                   f.handover_ms);
      areas_.erase(h.handle);  // the agent holds the replica now
    } else {
      f.result = st.ToString();
      spdlog::error("standby: instance {}: the spare host's agent did not launch the "
                    "replacement: {}; the replica (epoch {}) is kept here",
                    f.id, st.ToString(), f.epoch);
    }
    it = handovers_.erase(it);
  }
}

void Standby::SendFenced(net::Endpoint* to, const hot::Header& h, const std::string& id) {
  ++refused_["Fenced"];
  auto t = tombstones_.find(id);
  const uint64_t now_gen = t == tombstones_.end() ? 0 : t->second.generation;
  Send(to, hot::Type::kFenced, h.instance, h.generation, h.seq,
       hot::Body(hot::Fenced{now_gen, "instance " + id + " failed over from standby " +
                                          options_.name + " to generation " +
                                          std::to_string(now_gen) + "; generation " +
                                          std::to_string(h.generation) + " is fenced"}));
}

const Tombstone* Standby::FencedFor(const std::string& id, const std::string& agent,
                                             uint64_t generation) const {
  auto t = tombstones_.find(id);
  if (t == tombstones_.end()) return nullptr;
  if (agent == t->second.owner || generation < t->second.generation) return &t->second;
  return nullptr;
}

std::vector<Standby::PeerView> Standby::Peers() const {
  std::vector<PeerView> out;
  for (const auto& p : peers_) {
    auto live = live_->Get(p->agent);
    out.push_back({p->agent, p->suspected, p->heartbeats_sent, p->heard,
                   live && live->connected, live ? live->beats : 0});
  }
  return out;
}

void Standby::OnAccept(std::unique_ptr<net::Endpoint> ep) {
  auto p = std::make_unique<Peer>();
  p->ep = std::move(ep);
  p->ep->user = p.get();
  p->last_heard = std::chrono::steady_clock::now();
  Peer* raw = p.get();
  p->ep->set_on_error([this, raw](const Status&) {
    for (auto& [h, a] : areas_)
      if (a->owner == raw) {  // the area stays: its silence counts on, then failover
        a->owner = nullptr;
        a->orphan_heard = raw->last_heard;
      }
    std::erase_if(peers_, [raw](const auto& q) { return q.get() == raw; });
  });
  peers_.push_back(std::move(p));
}

void Standby::Send(net::Endpoint* to, hot::Type type, uint64_t instance, uint64_t generation,
                   uint64_t seq, const std::vector<std::byte>& body) {
  if (!to) return;
  auto frame = hot::Encode(hot::Header{type, 0, instance, generation, seq}, body);
  (void)to->SendAm(kAmId, frame);  // a failed endpoint reports itself through on_error
}

void Standby::Refuse(net::Endpoint* to, const hot::Header& h, const Status& st) {
  ++refused_[std::string(CodeName(st.code()))];
  Send(to, hot::Type::kError, h.instance, h.generation, h.seq,
       hot::Body(hot::ErrorMsg{st.code(), st.message()}));
}

void Standby::OnMessage(net::Endpoint* from, std::span<const std::byte> bytes) {
  Peer* p = from ? static_cast<Peer*>(from->user) : nullptr;
  auto frame = hot::Decode(bytes);
  if (!frame.ok()) return Refuse(from, hot::Header{}, frame.status());
  const hot::Header& h = frame->header;
  if (!p) return;  // no endpoint to answer on (a sender that gave none)
  p->last_heard = std::chrono::steady_clock::now();
  p->heard++;
  if (p->suspected) {
    p->suspected = false;
    spdlog::info("standby: agent {} is heard again", p->agent);
  }
  if (!p->hello && h.type != hot::Type::kHello)
    return Refuse(from, h, Status(Code::kFailedPrecondition,
                                  std::string(hot::TypeName(h.type)) +
                                      " before Hello: a connection starts with Hello"));
  if (h.instance != 0 && h.type != hot::Type::kHello) {
    if (auto f = fenced_handles_.find(h.instance); f != fenced_handles_.end())
      return SendFenced(from, h, f->second);
  }
  Status st = Status::Ok();
  switch (h.type) {
    case hot::Type::kHello: {
      auto m = hot::ParseHello(frame->body);
      if (!m.ok()) return Refuse(from, h, m.status());
      p->agent = m->agent;
      p->hello = true;
      p->hello_at = std::chrono::steady_clock::now();
      live_->Revive(p->agent);  // whatever died before was an earlier process
      spdlog::info("standby: agent {} connected from {} (UCX error handling {})", p->agent,
                   from->peer(), net::ErrorModeName(from->error_mode()));
      // The same agent on a new connection (it reconnected): its areas are
      // its own again, and their silence is judged on this connection.
      for (auto& [handle, a] : areas_)
        if (!a->fenced && a->owner_agent == p->agent && a->owner != p) {
          a->owner = p;
          a->owner_since = p->hello_at;
          spdlog::info("standby: agent {} reconnected; instance {} follows it", p->agent, a->id);
        }
      // Its old connection is given up, not judged: the agent left it
      // (it wedged, or the agent restarted), so its silence means nothing.
      for (auto& q : peers_)
        if (q.get() != p && q->hello && q->agent == p->agent && !q->ep->failed()) {
          spdlog::info("standby: agent {} is on a new connection; the old one is closed", p->agent);
          q->ep->Abandon(Status(Code::kUnavailable, "replaced by a new connection from agent " +
                                                        p->agent));
        }
      Send(from, hot::Type::kWelcome, 0, 0, h.seq,
           hot::Body(hot::Welcome{options_.name, options_.heartbeat_ms, options_.timeout_ms,
                                  live_->port()}));
      return;
    }
    case hot::Type::kReserve:
      st = OnReserve(*p, h, frame->body);
      break;
    case hot::Type::kCommit:
      st = OnCommit(*p, h, frame->body);
      break;
    case hot::Type::kData:
      st = OnData(*p, h, frame->body);
      break;
    case hot::Type::kRetire:
      st = OnRetire(*p, h);
      break;
    case hot::Type::kCopy:
      st = OnCopy(*p, h, frame->body);
      break;
    case hot::Type::kCopyDone:
      st = OnCopyDone(*p, h, frame->body);
      break;
    case hot::Type::kMove: {
      auto m = hot::ParseMove(frame->body);
      if (!m.ok()) return Refuse(from, h, m.status());
      auto a = OwnedArea(*p, h);
      if (!a.ok()) return Refuse(from, h, a.status());
      if ((*a)->copying)
        return Refuse(from, h, Status(Code::kFailedPrecondition,
                                      "instance " + (*a)->id +
                                          " is in a full copy: nothing to move to yet"));
      return FailOver(**a, std::chrono::steady_clock::now(), "planned failover: " + m->reason,
                      "request");
    }
    case hot::Type::kLeaving: {
      auto m = hot::ParseLeaving(frame->body);
      if (!m.ok()) return Refuse(from, h, m.status());
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(m->grace_ms);
      size_t n = 0;
      for (auto& [handle, a] : areas_)
        if (a->owner == p && !a->fenced) {
          a->grace_until = until;
          ++n;
        }
      spdlog::info("standby: agent {} is restarting: its {} instance(s) are not suspected for "
                   "{} ms, while a new agent takes them over",
                   p->agent, n, m->grace_ms);
      return;
    }
    case hot::Type::kHeartbeat: {
      auto m = hot::ParseHeartbeat(frame->body);
      if (!m.ok()) {
        st = m.status();
      } else if (m->inflight_bytes > 0) {
        const auto allowance = std::chrono::milliseconds(options_.timeout_ms) +
                               std::chrono::nanoseconds(m->inflight_bytes * 1'000'000'000ULL /
                                                        hot::kMinBandwidth);
        p->quiet_until = std::max(p->quiet_until, p->last_heard + allowance);
      }
      break;
    }
    default:
      st = Status(Code::kBadMessage, std::string(hot::TypeName(h.type)) +
                                         " is not a message an agent sends to a standby");
  }
  if (!st.ok()) Refuse(from, h, st);
}

Result<Standby::Area*> Standby::AreaFor(const hot::Header& h) {
  auto it = areas_.find(h.instance);
  if (it == areas_.end())
    return Status(Code::kNotFound, "no instance with handle " + std::to_string(h.instance) +
                                       " on standby " + options_.name);
  Area* a = it->second.get();
  if (h.generation < a->generation)
    return Status(Code::kStaleGeneration,
                  "instance " + a->id + " is owned by generation " + std::to_string(a->generation) +
                      "; generation " + std::to_string(h.generation) + " is fenced");
  if (h.generation > a->generation)
    return Status(Code::kStaleGeneration,
                  "instance " + a->id + " was reserved by generation " +
                      std::to_string(a->generation) + ", not " + std::to_string(h.generation) +
                      ": reserve it again first");
  return a;
}

// The area a request names, if this connection owns it.
Result<Standby::Area*> Standby::OwnedArea(Peer& p, const hot::Header& h) {
  SPARE_ASSIGN_OR_RETURN(Area * a, AreaFor(h));
  if (a->owner != &p)
    return Status(Code::kFailedPrecondition,
                  "instance " + a->id + " is reserved on another connection; reserve it again");
  return a;
}

Status Standby::OnReserve(Peer& p, const hot::Header& h, std::span<const std::byte> body) {
  SPARE_ASSIGN_OR_RETURN(hot::Reserve m, hot::ParseReserve(body));
  if (FencedFor(m.id, p.agent, h.generation)) {
    SendFenced(p.ep.get(), h, m.id);
    return Status::Ok();
  }
  Area* a = nullptr;
  for (auto& [handle, area] : areas_)
    if (area->id == m.id) a = area.get();
  if (a && a->fenced)
    return Status(Code::kFailedPrecondition,
                  "instance " + m.id + " is being failed over; reserve it again once its "
                                       "replacement runs");
  if (tombstones_.erase(m.id) > 0) SaveState();  // a newer owner protects it again
  if (a) {
    if (h.generation < a->generation)
      return Status(Code::kStaleGeneration,
                    "instance " + m.id + " is owned by generation " +
                        std::to_string(a->generation) + "; generation " +
                        std::to_string(h.generation) + " is fenced");
    const Replica& r = *a->rep;
    bool same = r.view.slot_count == m.slot_count && r.view.slot_size == m.slot_size &&
                r.targets.size() == m.regions.size();
    for (size_t i = 0; same && i < m.regions.size(); ++i) same = r.targets[i].size == m.regions[i];
    // Its own owner reserving with a new geometry (a region added): the old
    // replica is of no use to it; it is replaced (once no apply runs).
    const bool own = a->owner_agent == p.agent && !p.agent.empty();
    if (!same && !(own && a->applying == 0))
      return Status(Code::kInvalidArgument,
                    "instance " + m.id + " is reserved with other region sizes or staging "
                                         "geometry" +
                        (own ? std::string(" and an apply is running; reserve again")
                             : std::string(" by agent " + a->owner_agent + "; retire it first")));
    if (!same) {
      spdlog::info("standby: instance {}: reserved again by {} with another geometry; its old "
                   "replica (epoch {}) is dropped",
                   m.id, p.agent, a->epoch);
      areas_.erase(a->handle);
      a = nullptr;
    }
  }
  if (a) {
    a->generation = h.generation;
    a->owner = &p;
    a->owner_agent = p.agent;
    a->owner_since = p.hello_at;
    a->spec = m.spec;
    a->grace_until = {};
  } else {
    if (areas_.size() >= options_.max_instances)
      return Status(Code::kResourceExhausted,
                    "standby " + options_.name + " already holds " +
                        std::to_string(areas_.size()) + " instances (max_instances)");
    auto area = std::make_unique<Area>();
    area->id = m.id;
    area->handle = next_handle_++;
    area->generation = h.generation;
    area->owner = &p;
    area->owner_agent = p.agent;
    area->owner_since = p.hello_at;
    area->spec = m.spec;
    auto rep = std::make_shared<Replica>();
    for (size_t i = 0; i < m.regions.size(); ++i) {
      SPARE_ASSIGN_OR_RETURN(
          UniqueFd fd,
          region::CreateMemfd("spare-replica-" + m.id + "-" + std::to_string(i), m.regions[i]));
      SPARE_ASSIGN_OR_RETURN(void* map, region::MapShared(fd.get(), m.regions[i], true));
      rep->targets.push_back({fd.get(), m.regions[i], static_cast<std::byte*>(map)});
      rep->region_fds.push_back(std::move(fd));
    }
    const size_t bytes = epoch::StagingBytes(m.slot_count, m.slot_size);
    SPARE_ASSIGN_OR_RETURN(rep->staging_fd, region::CreateMemfd("spare-staging-" + m.id, bytes));
    SPARE_ASSIGN_OR_RETURN(void* base, region::MapShared(rep->staging_fd.get(), bytes, true));
    rep->view = {static_cast<std::byte*>(base), bytes, m.slot_count, m.slot_size};
    SPARE_ASSIGN_OR_RETURN(area->mem, worker_->Map(base, bytes));
    area->rep = std::move(rep);
    a = area.get();
    areas_[area->handle] = std::move(area);
  }
  Send(p.ep.get(), hot::Type::kReserved, a->handle, a->generation, h.seq,
       hot::Body(hot::Reserved{reinterpret_cast<uint64_t>(a->rep->view.base), a->rep->view.size,
                               a->mem->packed_key(), a->epoch}));
  return Status::Ok();
}

// Bytes that a put would have written (the connection runs over TCP, where
// the agent sends them instead: hot/wire.h): into the staging area outside a
// full copy, into a replica region during one. Bounds are the area's.
Status Standby::OnData(Peer& p, const hot::Header& h, std::span<const std::byte> body) {
  SPARE_ASSIGN_OR_RETURN(hot::Data m, hot::ParseData(body));
  SPARE_ASSIGN_OR_RETURN(Area * a, OwnedArea(p, h));
  const uint64_t end = m.offset + m.bytes.size();
  std::byte* dst = nullptr;
  if (m.space == hot::kStagingSpace) {
    if (a->copying)
      return Status(Code::kFailedPrecondition,
                    "Data for the staging area of " + a->id + " during its full copy");
    const epoch::StagingView& view = a->rep->view;
    if (m.offset < epoch::kSlotBase || end > view.size)
      return Status(Code::kOutOfBounds,
                    "Data at " + std::to_string(m.offset) + "+" + std::to_string(m.bytes.size()) +
                        " outside the slots of the staging area of " + a->id + " (" +
                        std::to_string(epoch::kSlotBase) + ".." + std::to_string(view.size) + ")");
    dst = view.base + m.offset;
  } else {
    if (!a->copying)
      return Status(Code::kFailedPrecondition, "Data for a region of " + a->id +
                                                   " outside a full copy (Copy first)");
    if (m.space - 1 >= a->rep->targets.size())
      return Status(Code::kOutOfBounds, "Data for region " + std::to_string(m.space - 1) +
                                            " of " + a->id + ", which has " +
                                            std::to_string(a->rep->targets.size()));
    const auto& t = a->rep->targets[m.space - 1];
    if (end > t.size || !t.map)
      return Status(Code::kOutOfBounds, "Data at " + std::to_string(m.offset) + "+" +
                                            std::to_string(m.bytes.size()) + " past region " +
                                            std::to_string(m.space - 1) + " of " + a->id +
                                            " (" + std::to_string(t.size) + " bytes)");
    dst = static_cast<std::byte*>(t.map) + m.offset;
  }
  std::memcpy(dst, m.bytes.data(), m.bytes.size());
  return Status::Ok();
}

Status Standby::OnCommit(Peer& p, const hot::Header& h, std::span<const std::byte> body) {
  SPARE_ASSIGN_OR_RETURN(hot::Commit m, hot::ParseCommit(body));
  SPARE_ASSIGN_OR_RETURN(Area * a, OwnedArea(p, h));
  if (a->copying)
    return Status(Code::kFailedPrecondition, "Commit of epoch " + std::to_string(h.seq) + " for " +
                                                 a->id + " during its full copy: send it after "
                                                         "CopyDone is acknowledged");
  if (a->torn)
    return Status(Code::kTornImage, "the replica of " + a->id +
                                        " is torn (an apply failed midway); retire it and "
                                        "reserve it again");
  const epoch::StagingView& view = a->rep->view;
  if (m.first_slot >= view.slot_count || m.parts > view.slot_count)
    return Status(Code::kOutOfBounds, "Commit of slots " + std::to_string(m.first_slot) + "+" +
                                          std::to_string(m.parts) + " outside the " +
                                          std::to_string(view.slot_count) +
                                          " slots reserved for " + a->id);
  const uint64_t epoch = h.seq;
  if (epoch != 0 && epoch == a->epoch && a->queued == a->epoch) {  // sent again: it is applied
    Send(p.ep.get(), hot::Type::kAck, a->handle, a->generation, epoch, {});
    return Status::Ok();
  }
  if (epoch != 0 && epoch <= a->queued) return Status::Ok();  // sent again: its Ack is coming
  if (epoch != a->queued + 1)
    return Status(Code::kTornEpoch, "Commit of epoch " + std::to_string(epoch) + " for " + a->id +
                                        ": the replica is at epoch " + std::to_string(a->queued));
  // Validated and applied on the apply worker, in order; the loop goes on.
  a->queued = epoch;
  a->applying++;
  struct Applied {
    Status status = Status::Ok();
    bool torn = false;
    std::string record;
  };
  applier_->Post([this, rep = a->rep, handle = a->handle, id = a->id, generation = h.generation,
                  epoch, first = m.first_slot, parts = m.parts]() -> Worker::Completion {
    auto out = std::make_shared<Applied>();
    if (rep->applied + 1 != epoch) {
      out->status = Status(Code::kTornEpoch, "Commit of epoch " + std::to_string(epoch) + " for " +
                                                 id + ": the replica is at epoch " +
                                                 std::to_string(rep->applied));
    } else if (auto v = epoch::ValidateEpoch(rep->view, generation, epoch, first, parts,
                                             rep->targets);
               !v.ok()) {
      out->status = v.status();
    } else if (Status w = epoch::WriteEpoch(*v, rep->targets, MidApplyFault()); !w.ok()) {
      // The replica is between epochs now: never acknowledged, never handed
      // over as an epoch (the area is dropped on the loop).
      out->status = w.With("applying to the replica of " + id);
      out->torn = true;
      rep->applied = UINT64_MAX;
    } else {
      rep->applied = epoch;
      out->record = std::move(v->record);
    }
    return [this, handle, epoch, out] {
      OnApplied(handle, epoch, out->status, out->torn, std::move(out->record));
    };
  });
  return Status::Ok();
}

// On the loop: an apply finished. Acknowledged to the owner unless the area
// was fenced meanwhile (then the epoch is in the replica, its outputs were
// never released: like any epoch the old owner sent and never heard back
// about); a fenced area waiting for its applies is handed over now.
void Standby::OnApplied(uint64_t handle, uint64_t epoch, const Status& st, bool torn,
                        std::string record) {
  auto it = areas_.find(handle);
  if (it == areas_.end()) return;  // retired meanwhile
  Area& a = *it->second;
  a.applying--;
  if (st.ok()) {
    a.epoch = epoch;
    a.record = std::move(record);
  } else {
    a.queued = a.epoch;  // what follows the refused epoch is refused too
    if (torn) a.torn = true;
    spdlog::error("standby: instance {}: epoch {} refused: {}{}", a.id, epoch, st.ToString(),
                  torn ? "; the replica is torn and will never be acknowledged or handed over"
                       : "; the replica stays at epoch " + std::to_string(a.epoch));
  }
  if (a.handover_pending && a.applying == 0) return HandOver(a, *a.handover_pending);
  if (a.fenced || !a.owner) return;
  if (!st.ok())
    return Refuse(a.owner->ep.get(), hot::Header{hot::Type::kCommit, 0, handle, a.generation, epoch},
                  st);
  Send(a.owner->ep.get(), hot::Type::kAck, handle, a.generation, epoch, {});
}

Status Standby::OnRetire(Peer& p, const hot::Header& h) {
  SPARE_RETURN_IF_ERROR(OwnedArea(p, h).status());
  areas_.erase(h.instance);
  Send(p.ep.get(), hot::Type::kAck, h.instance, h.generation, h.seq, {});
  return Status::Ok();
}

// A full copy begins: the replica is emptied (every page punched out; what
// the agent puts is all it will hold) and its regions registered for puts.
Status Standby::OnCopy(Peer& p, const hot::Header& h, std::span<const std::byte> body) {
  SPARE_ASSIGN_OR_RETURN(hot::Copy m, hot::ParseCopy(body));
  SPARE_ASSIGN_OR_RETURN(Area * a, OwnedArea(p, h));
  if (a->applying > 0)
    return Status(Code::kFailedPrecondition,
                  "Copy for " + a->id + " while " + std::to_string(a->applying) +
                      " epoch(s) are being applied: send it once every Commit is answered");
  if (a->torn) return Status(Code::kTornImage, "the replica of " + a->id + " is torn; retire it");
  a->copy_mems.clear();
  hot::CopyKeys keys;
  for (const auto& t : a->rep->targets) {
    if (::fallocate(t.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                    static_cast<off_t>(t.size)) != 0)
      return Status::FromErrno("emptying the replica of " + a->id + " for a full copy", errno);
    SPARE_ASSIGN_OR_RETURN(auto mem, worker_->Map(t.map, t.size));
    keys.regions.push_back({reinterpret_cast<uint64_t>(t.map), t.size, mem->packed_key()});
    a->copy_mems.push_back(std::move(mem));
  }
  a->copying = true;
  a->said_unreplaceable = false;
  a->copy_epoch = m.epoch;
  a->copy_started = std::chrono::steady_clock::now();
  a->epoch = a->queued = 0;
  a->record.clear();
  spdlog::info("standby: instance {}: full copy of its image at epoch {} begins (the replica "
               "holds no epoch until it is done)",
               a->id, m.epoch);
  Send(p.ep.get(), hot::Type::kCopyKeys, a->handle, a->generation, h.seq, hot::Body(keys));
  return Status::Ok();
}

// The copy is all put: the replica is that epoch. Set through the apply
// worker, so it is ordered with the applies that follow.
Status Standby::OnCopyDone(Peer& p, const hot::Header& h, std::span<const std::byte> body) {
  SPARE_ASSIGN_OR_RETURN(hot::CopyDone m, hot::ParseCopyDone(body));
  SPARE_ASSIGN_OR_RETURN(Area * a, OwnedArea(p, h));
  if (!a->copying || h.seq != a->copy_epoch)
    return Status(Code::kFailedPrecondition,
                  "CopyDone of epoch " + std::to_string(h.seq) + " for " + a->id + ", but " +
                      (a->copying ? "the copy began for epoch " + std::to_string(a->copy_epoch)
                                  : std::string("no full copy is in progress")));
  const uint64_t epoch = h.seq;
  const double ms = MsBetween(a->copy_started, std::chrono::steady_clock::now());
  a->copy_mems.clear();
  a->copying = false;
  a->queued = epoch;
  a->applying++;
  applier_->Post([this, rep = a->rep, handle = a->handle, epoch,
                  record = std::move(m.record)]() mutable -> Worker::Completion {
    rep->applied = epoch;
    return [this, handle, epoch, record = std::move(record)]() mutable {
      OnApplied(handle, epoch, Status::Ok(), false, std::move(record));
    };
  });
  spdlog::info("standby: instance {}: full copy done, the replica is epoch {} ({:.1f} MiB in "
               "{:.0f} ms)",
               a->id, epoch, static_cast<double>(m.bytes) / (1 << 20), ms);
  full_copies_++;
  full_copy_bytes_ += m.bytes;
  return Status::Ok();
}

std::vector<Standby::AreaView> Standby::Areas() const {
  std::vector<AreaView> out;
  for (const auto& [handle, a] : areas_) {
    AreaView v{a->id, a->handle, a->generation, a->epoch, a->record, {}};
    for (const auto& fd : a->rep->region_fds) v.region_fds.push_back(fd.get());
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace spare::standby
