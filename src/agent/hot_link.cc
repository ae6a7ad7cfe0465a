// The agent's side of hot protection (agent/hot_link.h).
#include <spdlog/spdlog.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "agent/hot_link.h"
#include "agent/process.h"
#include "common/fault.h"
#include "hot/wire.h"
#include "ipc/body.h"

namespace spare::agent {
using hot::kAmId;

namespace {

// What the spare host's agent needs to launch a replacement (Takeover):
// the Run body's fields, and the region table (addresses, sizes).
nlohmann::json LaunchSpecJson(const Instance& inst) {
  const InstanceSpec& s = inst.rec.spec;
  nlohmann::json env = nlohmann::json::object();
  for (const std::string& kv : s.env)
    if (auto eq = kv.find('='); eq != std::string::npos && eq > 0)
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
  nlohmann::json regions = nlohmann::json::array();
  for (const RegionRecord& r : inst.rec.regions)
    regions.push_back({{"name", r.name}, {"index", r.index}, {"address", r.address}, {"size", r.size}});
  return {{"id", s.id},
          {"policy", s.policy},
          {"argv", s.argv},
          {"env", env},
          {"cwd", s.cwd},
          {"slot_count", s.slot_count},
          {"slot_size", s.slot_size},
          {"max_restarts", s.max_restarts},
          {"restart_window_ms", s.restart_window_ms},
          {"regions", regions}};
}

}  // namespace

// Builds a new link to the standby. The UCX steps that can fail (a
// worker: UCX finds no usable device while the link is down; an endpoint:
// no route) come first, so a failure leaves the current link, if any, as
// it was.
Status Agent::ConnectStandby() {
  SPARE_ASSIGN_OR_RETURN(net::Address where,
                         net::ParseAddress(options_.standby, "--standby", /*allow_any_port=*/false));
  SPARE_ASSIGN_OR_RETURN(std::unique_ptr<net::Worker> worker, net::Worker::Create());
  SPARE_RETURN_IF_ERROR(worker->SetAmHandler(
      kAmId, [this](net::Endpoint*, std::span<const std::byte> b) { OnStandbyMessage(b); }));
  SPARE_ASSIGN_OR_RETURN(std::unique_ptr<net::Endpoint> ep,
                         worker->Connect(where.host, where.port, options_.standby_error_mode));
  UniqueFd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer.valid()) return Status::FromErrno("timerfd_create", errno);
  if (hot_) {
    RemoveWatch(hot_->watch, hot_->worker->event_fd());
    RemoveWatch(hot_->timer_watch, hot_->timer.get());
    hot_.reset();  // endpoint, then worker (a dead peer's close is given up on)
  }
  hot_ = std::make_unique<HotLink>();
  hot_->host = where.host;
  hot_->port = where.port;
  hot_->worker = std::move(worker);
  hot_->ep = std::move(ep);
  hot_->timer = std::move(timer);
  SPARE_ASSIGN_OR_RETURN(hot_->watch,
                         AddWatch(hot_->worker->event_fd(), EPOLLIN, {WatchKind::kStandby}));
  SPARE_ASSIGN_OR_RETURN(hot_->timer_watch, AddWatch(hot_->timer.get(), EPOLLIN,
                                                     {WatchKind::kStandby, hot_->timer.get()}));
  ArmStandbyTimer(hot_->heartbeat_ms);
  hot_->last_heard = hot_->connected_at = std::chrono::steady_clock::now();
  hot_->ep->set_on_error([this](const Status& st) {
    spdlog::error("standby {}:{}: {}; hot instances {} until it is back", hot_->host, hot_->port,
                  st.ToString(), LossPolicyText());
  });
  SendToStandby(static_cast<uint8_t>(hot::Type::kHello), 0, 0, hot_->next_seq++,
                hot::Body(hot::Hello{"agent:" + options_.dir}));
  spdlog::info("agent: standby {}:{}, connecting (UCX error handling {})", hot_->host, hot_->port,
               net::ErrorModeName(hot_->ep->error_mode()));
  ProgressStandby();
  return Status::Ok();
}

// Suspected, its endpoint failed, reconnecting after a loss, or not
// answering a first connection for longer than the timeout.
bool Agent::StandbyUnreachable(std::chrono::steady_clock::time_point now) const {
  if (!hot_) return false;
  if (hot_->suspected || hot_->connect_failed || hot_->ep->failed()) return true;
  if (hot_->welcomed) return false;
  return hot_->reconnects > 0 ||
         now - hot_->connected_at > std::chrono::milliseconds(hot_->timeout_ms);
}

const char* Agent::LossPolicyText() const {
  return options_.continue_on_standby_loss ? "go on UNPROTECTED (--on-standby-loss=continue)"
                                           : "hold their outputs";
}

void Agent::ProgressStandby() {
  if (hot_) hot_->worker->Progress();
}

void Agent::ArmStandbyTimer(uint32_t period_ms) {
  itimerspec its{};
  its.it_interval.tv_sec = period_ms / 1000;
  its.it_interval.tv_nsec = static_cast<long>(period_ms % 1000) * 1'000'000;
  its.it_value = its.it_interval;
  ::timerfd_settime(hot_->timer.get(), 0, &its, nullptr);
}

void Agent::OnStandbyTimer() {
  uint64_t ticks = 0;
  if (::read(hot_->timer.get(), &ticks, sizeof(ticks)) != sizeof(ticks)) return;
  ProgressStandby();  // what arrived first: a late message is not silence
  const auto now = std::chrono::steady_clock::now();
  if (hot_->welcomed)
    SendToStandby(static_cast<uint8_t>(hot::Type::kHeartbeat), 0, 0, hot_->heartbeats_sent++,
                  hot::Body(hot::Heartbeat{static_cast<uint64_t>(
                      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch())
                          .count())}));
  // Suspicion counts either channel (a busy loop here or there is not the
  // standby's silence); reconnecting looks at the UCX connection alone.
  const auto silent_ucx = now - hot_->last_heard;
  const auto silent =
      live_ && live_->connected() ? std::min(silent_ucx, now - live_->last_heard()) : silent_ucx;
  // A standby silent this long (or never answering, or whose endpoint
  // failed) is reached again from scratch: a new connection, every hot
  // instance reserves again and ships what the replica lacks.
  const auto reconnect_after = std::chrono::milliseconds(std::max<uint32_t>(1000, 10 * hot_->timeout_ms));
  const bool failed_long_enough = (hot_->ep->failed() || hot_->connect_failed) &&
                                  now - hot_->connected_at > std::chrono::milliseconds(hot_->backoff_ms);
  if (failed_long_enough || silent_ucx > reconnect_after) {
    return ReconnectStandby(hot_->connect_failed ? "the last reconnect failed"
                            : hot_->ep->failed() ? hot_->ep->error().ToString()
                            : hot_->welcomed
                                ? "silent for " +
                                      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(silent_ucx).count()) +
                                      " ms"
                                : "no answer to Hello");
  }
  if (hot_->welcomed && !hot_->suspected && silent > std::chrono::milliseconds(hot_->timeout_ms)) {
    hot_->suspected = true;
    hot_->suspicions++;
    for (auto& [id, inst] : instances_) MaybeRelaunch(*inst);  // no longer waits for acks
    spdlog::error(
        "standby {} at {}:{} silent for {} ms (timeout {} ms): hot instances {} until it answers",
        hot_->standby_name, hot_->host, hot_->port,
        std::chrono::duration_cast<std::chrono::milliseconds>(silent).count(), hot_->timeout_ms,
        LossPolicyText());
  }
  if (hot_->welcomed && !hot_->suspected)
    for (auto& [id, inst] : instances_)
      if (inst->standby_blocked && inst->copy_retry_at != std::chrono::steady_clock::time_point{} &&
          now >= inst->copy_retry_at && inst->rec.state == InstanceState::kRunning) {
        inst->standby_blocked = false;
        inst->copy_retry_at = {};
        inst->standby_handle = 0;  // reserve afresh: the Reserved decides the copy again
        inst->standby_key.reset();
        inst->to_ship.assign(inst->unacked.begin(), inst->unacked.end());
        ReserveOnStandby(*inst);
      }
  if (StandbyUnreachable(now) && options_.continue_on_standby_loss) {
    const std::string why = hot_->ep->failed() ? hot_->ep->error().ToString()
                            : hot_->welcomed   ? "silent past its timeout"
                                               : "not answering";
    for (auto& [id, inst] : instances_) GoUnprotected(*inst, why);
  }
}

// --on-standby-loss=continue, no standby acknowledging: the instance's
// epochs are durable once applied here. What was waiting for an ack counts
// as acknowledged now (it is applied, or will be, in order), nothing more
// ships, and the next standby that answers gets a full copy (Reserved).
void Agent::GoUnprotected(Instance& inst, const std::string& why) {
  if (inst.unprotected || inst.rec.spec.policy != "hot" || inst.rec.fenced || inst.moving ||
      !inst.image_held())
    return;
  EndFullCopy(inst, /*done=*/false);  // its held epochs apply now
  for (const Instance::Ship& s : inst.unacked) inst.epochs.MarkAcked(s.epoch);
  inst.unacked.clear();
  inst.to_ship.clear();
  inst.standby_handle = 0;
  inst.standby_key.reset();
  inst.standby_blocked = false;
  inst.unprotected = true;
  inst.unprotected_since = std::chrono::steady_clock::now();
  inst.unprotected_periods++;
  spdlog::error("instance {}: standby {} lost ({}): running UNPROTECTED "
                "(--on-standby-loss=continue): its outputs are released once applied on this "
                "host, so a failure of this host now loses what it acknowledged since. If the "
                "standby still hears nothing from this host it fails the instance over, and "
                "this copy is fenced when the link returns. Protected again after a standby "
                "answers and a full copy",
                inst.rec.spec.id, hot_->standby_name.empty() ? options_.standby : hot_->standby_name,
                why);
  if (inst.epochs.Advance()) SendProgress(inst);
  MaybeRelaunch(inst);
}

void Agent::ReconnectStandby(const std::string& why) {
  spdlog::warn("standby {}:{}: {}; connecting again (hot instances {} until it answers and has "
               "what they committed)",
               hot_->host, hot_->port, why, LossPolicyText());
  for (auto& [id, inst] : instances_) {
    if (inst->rec.spec.policy != "hot") continue;
    if (inst->moving && !inst->pidfd.valid()) {
      // A planned failover cannot finish without this standby: its process
      // is gone, and what it committed may be here only.
      Status st(Code::kUnavailable, "planned failover of " + id +
                                        " interrupted: the standby went away (" + why +
                                        "); its committed image is here: `spare run` it again");
      for (ConnRef ref : inst->moving->waiters) SendTo(ref, ipc::ErrorMessage(st));
      inst->moving.reset();
      inst->rec.state = InstanceState::kFailed;
      inst->rec.reason = st.message();
      spdlog::error("instance {}: {}", id, st.message());
      SaveStateOrLog();
    }
    EndFullCopy(*inst, /*done=*/false);
    inst->standby_handle = 0;
    inst->standby_reserving = false;
    inst->standby_blocked = false;
    inst->standby_key.reset();  // its endpoint goes with the link
    inst->to_ship.assign(inst->unacked.begin(), inst->unacked.end());
  }
  for (auto& [id, inst] : instances_) MaybeRelaunch(*inst);  // acks will not come now
  const uint64_t reconnects = hot_->reconnects + 1;
  // Retries back off from 200 ms to 2 s while nobody answers.
  const uint32_t backoff = std::min<uint32_t>(2000, hot_->welcomed ? 200 : 2 * hot_->backoff_ms);
  Status st = ConnectStandby();  // replaces hot_ only when it succeeds
  hot_->reconnects = reconnects;
  hot_->backoff_ms = backoff;
  if (!st.ok()) {
    // The old link stays, taken as unreachable; the timer tries again.
    hot_->connect_failed = true;
    hot_->welcomed = false;
    hot_->connected_at = std::chrono::steady_clock::now();
    spdlog::error("standby {}:{}: reconnecting failed: {}; trying again in {} ms (hot "
                  "instances {} meanwhile)",
                  hot_->host, hot_->port, st.ToString(), backoff, LossPolicyText());
  }
}

// A graceful stop (the instances stay up for the next agent): the standby
// is asked not to fail them over while the next agent takes them back.
void Agent::LeaveStandby() {
  if (!hot_ || !hot_->welcomed) return;
  SendToStandby(static_cast<uint8_t>(hot::Type::kLeaving), 0, 0, hot_->next_seq++,
                hot::Body(hot::Leaving{options_.standby_grace_ms}));
  bool sent = false;
  (void)hot_->ep->Flush([&sent](const Status&) { sent = true; });
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  while (!sent && std::chrono::steady_clock::now() < end) {
    hot_->worker->Progress();
    if (!sent) ::usleep(1000);
  }
  // On the liveness channel too: its close, when this process ends, must
  // not read as a death.
  const bool live_told = live_ && live_->Leave(options_.standby_grace_ms, std::chrono::milliseconds(200));
  spdlog::info("agent: told standby {} it is restarting (grace {} ms){}{}", hot_->standby_name,
               options_.standby_grace_ms, sent ? "" : " (not confirmed)",
               !live_ || live_told ? "" : " (not on the liveness channel)");
}

// Before a large burst of puts: the standby's silence allowance grows by
// their transfer time, since this connection's next messages queue behind
// them (hot::Heartbeat.inflight_bytes).
void Agent::AnnounceToStandby(uint64_t bytes) {
  if (bytes < (1u << 20)) return;  // well inside any timeout
  SendToStandby(static_cast<uint8_t>(hot::Type::kHeartbeat), 0, 0, hot_->heartbeats_sent++,
                hot::Body(hot::Heartbeat{static_cast<uint64_t>(
                                             std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                 std::chrono::steady_clock::now().time_since_epoch())
                                                 .count()),
                                         bytes}));
}

void Agent::SendToStandby(uint8_t type, uint64_t instance, uint64_t generation, uint64_t seq,
                          const std::vector<std::byte>& body) {
  auto frame =
      hot::Encode(hot::Header{static_cast<hot::Type>(type), 0, instance, generation, seq}, body);
  Status st = hot_->ep->SendAm(kAmId, frame);
  // A failed endpoint refuses every send until the link is replaced
  // (heartbeats every 10 ms): the first refusal is logged, then one in 1000.
  if (!st.ok() && hot_->send_failures++ % 1000 == 0)
    spdlog::warn("standby: {} not sent: {} ({} sends refused on this link)",
                 hot::TypeName(static_cast<hot::Type>(type)), st.ToString(), hot_->send_failures);
}

void Agent::ReserveOnStandby(Instance& inst) {
  if (inst.standby_reserving || inst.standby_handle != 0 || !hot_->welcomed) return;
  hot::Reserve m;
  m.id = inst.rec.spec.id;
  for (const auto& r : inst.rec.regions) m.regions.push_back(r.size);
  m.slot_count = inst.staging.view().slot_count;
  m.slot_size = inst.staging.view().slot_size;
  m.spec = LaunchSpecJson(inst).dump();
  const uint64_t seq = hot_->next_seq++;
  hot_->reserving[seq] = inst.rec.spec.id;
  inst.standby_reserving = true;
  SendToStandby(static_cast<uint8_t>(hot::Type::kReserve), 0, inst.rec.generation, seq,
                hot::Body(m));
}

// The instance's image is released (stop, or a fresh run): its replica too,
// or a later run of the same id would find a replica ahead of its image.
void Agent::RetireOnStandby(Instance& inst) {
  if (!hot_ || inst.standby_handle == 0) return;
  SendToStandby(static_cast<uint8_t>(hot::Type::kRetire), inst.standby_handle,
                inst.rec.generation, hot_->next_seq++, {});
  spdlog::info("instance {}: replica on standby {} retired", inst.rec.spec.id,
               hot_->standby_name);
  inst.standby_handle = 0;
  inst.standby_key.reset();
  inst.to_ship.clear();
}

// Puts the epoch's slots into the same slots of the standby's staging area,
// flushes, then commits. The slots stay the instance's until the standby's
// Ack (EpochQueue: hot releases only acknowledged epochs).
void Agent::ShipEpoch(Instance& inst, uint64_t epoch, uint32_t first_slot, uint32_t parts) {
  if (!hot_->welcomed || inst.standby_handle == 0 || inst.standby_blocked || inst.copy) {
    inst.to_ship.push_back({epoch, first_slot, parts});
    if (hot_->welcomed && !inst.standby_blocked) ReserveOnStandby(inst);
    return;
  }
  const epoch::StagingView& view = inst.staging.view();
  auto* key = static_cast<net::RemoteKey*>(inst.standby_key.get());
  uint64_t total = 0;
  for (uint32_t i = 0; i < parts; ++i) {
    epoch::SlotHeader h;
    std::memcpy(&h, view.slot((first_slot + i) % view.slot_count), sizeof(h));
    total += std::min<uint64_t>(std::max<uint64_t>(h.used, sizeof(h)), view.slot_size);
  }
  AnnounceToStandby(total);
  for (uint32_t i = 0; i < parts; ++i) {
    const uint32_t slot = (first_slot + i) % view.slot_count;
    const std::byte* src = view.slot(slot);
    epoch::SlotHeader h;
    std::memcpy(&h, src, sizeof(h));
    const uint64_t used = std::min<uint64_t>(std::max<uint64_t>(h.used, sizeof(h)), view.slot_size);
    const uint64_t offset = epoch::kSlotBase + uint64_t{slot} * view.slot_size;
    Status st = hot_->data_by_message
                    ? SendData(inst.standby_handle, inst.rec.generation, epoch, hot::kStagingSpace,
                               offset, src, used)
                    : hot_->ep->Put(src, used, inst.standby_staging + offset, *key);
    if (!st.ok()) {
      inst.ship_errors++;
      spdlog::error("instance {}: epoch {} not shipped to the standby: {}; its outputs stay held",
                    inst.rec.spec.id, epoch, st.ToString());
      return;
    }
    inst.ship_bytes +=
        used + (hot_->data_by_message
                    ? (hot::kHeaderSize + hot::kDataPrefix) * ((used + hot::kMaxData - 1) / hot::kMaxData)
                    : 0);
  }
  inst.shipped_epochs++;
  inst.ship_bytes += hot::kHeaderSize + 8;  // the Commit frame
  const std::string id = inst.rec.spec.id;
  const uint64_t handle = inst.standby_handle, generation = inst.rec.generation;
  Status st = hot_->ep->Flush([this, id, handle, generation, epoch, first_slot,
                               parts](const Status& flushed) {
    Instance* in = FindMutable(id);
    if (!in || in->standby_handle != handle) return;
    if (!flushed.ok()) {
      in->ship_errors++;
      spdlog::error("instance {}: epoch {}: flush to the standby failed: {}", id, epoch,
                    flushed.ToString());
      return;
    }
    fault::At("agent-before-commit");
    SendToStandby(static_cast<uint8_t>(hot::Type::kCommit), handle, generation, epoch,
                  hot::Body(hot::Commit{first_slot, parts}));
  });
  if (!st.ok()) inst.ship_errors++;
}

// The bytes a put would write, as Data messages of at most hot::kMaxData.
Status Agent::SendData(uint64_t handle, uint64_t generation, uint64_t seq, uint32_t space,
                       uint64_t offset, const std::byte* src, uint64_t len) {
  for (uint64_t at = 0; at < len; at += hot::kMaxData) {
    const uint64_t n = std::min<uint64_t>(hot::kMaxData, len - at);
    auto frame = hot::EncodeData(hot::Header{hot::Type::kData, 0, handle, generation, seq}, space,
                                 offset + at, std::span(src + at, n));
    SPARE_RETURN_IF_ERROR(hot_->ep->SendAm(kAmId, std::move(frame)));
  }
  return Status::Ok();
}

void Agent::OnStandbyMessage(std::span<const std::byte> bytes) {
  auto frame = hot::Decode(bytes);
  if (!frame.ok()) {
    spdlog::warn("standby: refused a message: {}", frame.status().ToString());
    return;
  }
  const hot::Header& h = frame->header;
  hot_->last_heard = std::chrono::steady_clock::now();
  if (hot_->suspected) {
    hot_->suspected = false;
    spdlog::info("standby {} answers again", hot_->standby_name);
    for (auto& [id, inst] : instances_)  // resync what ran unprotected meanwhile
      if (inst->unprotected && inst->rec.state == InstanceState::kRunning &&
          !inst->rec.regions.empty())
        ReserveOnStandby(*inst);
  }
  switch (h.type) {
    case hot::Type::kWelcome: {
      auto m = hot::ParseWelcome(frame->body);
      if (!m.ok()) {
        spdlog::warn("standby: {}", m.status().ToString());
        return;
      }
      hot_->welcomed = true;
      hot_->standby_name = m->standby;
      hot_->heartbeat_ms = m->heartbeat_ms;
      hot_->timeout_ms = m->timeout_ms;
      ArmStandbyTimer(m->heartbeat_ms);
      if (m->live_port != 0) {
        if (!live_) {
          // A loop this late stops the beats: the standby then judges it silent.
          auto live = hot::LiveClient::Create(
              "agent:" + options_.dir,
              std::chrono::milliseconds(std::max<uint32_t>(1000, 10 * m->timeout_ms)), &pulse_);
          if (live.ok())
            live_ = std::move(live).value();
          else
            spdlog::error("agent: no liveness channel to the standby: {}; it judges this agent "
                          "by the UCX connection's heartbeats alone",
                          live.status().ToString());
        }
        if (live_) live_->Target(hot_->host, m->live_port, m->heartbeat_ms);
      }
      {
        const std::string lanes = hot_->worker->TransportsOf(*hot_->ep);
        hot_->data_by_message = lanes.find("tcp") != std::string::npos;
        spdlog::info("agent: standby {} at {}:{} answered (heartbeat {} ms, timeout {} ms; "
                     "lanes {}, data by {})",
                     m->standby, hot_->host, hot_->port, m->heartbeat_ms, m->timeout_ms, lanes,
                     hot_->data_by_message ? "Data messages" : "put");
      }
      // Every hot instance with an image is protected again (or for the
      // first time): a replica that lacks epochs gets a full copy.
      for (auto& [id, inst] : instances_)
        if (inst->rec.spec.policy == "hot" && inst->image_held() && !inst->rec.fenced &&
            inst->rec.state == InstanceState::kRunning && !inst->rec.regions.empty())
          ReserveOnStandby(*inst);
      return;
    }
    case hot::Type::kReserved: {
      auto it = hot_->reserving.find(h.seq);
      if (it == hot_->reserving.end()) return;
      Instance* inst = FindMutable(it->second);
      hot_->reserving.erase(it);
      if (!inst) return;
      inst->standby_reserving = false;
      auto m = hot::ParseReserved(frame->body);
      if (!m.ok()) {
        spdlog::error("instance {}: standby's Reserved refused: {}", inst->rec.spec.id,
                      m.status().ToString());
        return;
      }
      auto key = hot_->ep->UnpackKey(std::as_bytes(std::span(m->key.data(), m->key.size())));
      if (!key.ok()) {
        spdlog::error("instance {}: {}", inst->rec.spec.id, key.status().ToString());
        return;
      }
      inst->standby_key = std::shared_ptr<net::RemoteKey>(std::move(key).value());
      inst->standby_staging = m->staging_addr;
      inst->standby_handle = h.instance;
      if (std::exchange(inst->unprotected, false)) {
        // From here on its epochs wait for acks again; the replica lacks
        // what ran unprotected, so (below) a full copy brings it up to date.
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                       inst->unprotected_since)
                             .count();
        spdlog::warn("instance {}: standby {} is back after {:.1f} s unprotected: resyncing "
                     "(outputs are held again until its replica has everything)",
                     inst->rec.spec.id, hot_->standby_name, s);
      }
      if (std::exchange(inst->standby_reserve_again, false)) {
        RetireOnStandby(*inst);  // reserved with the regions it had then
        inst->to_ship.assign(inst->unacked.begin(), inst->unacked.end());
        ReserveOnStandby(*inst);
        return;
      }
      const uint64_t replica = m->replica_epoch;
      // What the replica must hold for the unacknowledged epochs to follow.
      const uint64_t base =
          inst->unacked.empty() ? inst->epochs.last() : inst->unacked.front().epoch - 1;
      spdlog::info("instance {}: reserved on standby {} (handle {}, replica at epoch {})",
                   inst->rec.spec.id, hot_->standby_name, h.instance, replica);
      inst->to_ship.assign(inst->unacked.begin(), inst->unacked.end());
      if (replica < base || replica > inst->epochs.last()) {
        BeginFullCopy(*inst);
        return;
      }
      // The replica has every epoch up to `replica`: those count as
      // acknowledged, the rest ship (again) in order.
      inst->standby_acked = std::max(inst->standby_acked, replica);
      while (!inst->unacked.empty() && inst->unacked.front().epoch <= replica) {
        inst->epochs.MarkAcked(inst->unacked.front().epoch);
        inst->unacked.pop_front();
      }
      if (inst->epochs.Advance()) SendProgress(*inst);
      std::deque<Instance::Ship> queued;
      queued.swap(inst->to_ship);
      for (const auto& q : queued)
        if (q.epoch > replica) ShipEpoch(*inst, q.epoch, q.first_slot, q.parts);
      return;
    }
    case hot::Type::kAck: {
      for (auto& [id, inst] : instances_) {
        if (inst->standby_handle != h.instance || h.instance == 0) continue;
        if (inst->copy) {  // only the copy's own epoch can be acknowledged now
          if (h.seq == inst->copy->epoch && CopyShipped(*inst)) EndFullCopy(*inst, true);
          return;
        }
        inst->standby_acked = std::max(inst->standby_acked, h.seq);
        inst->epochs.MarkAcked(h.seq);
        while (!inst->unacked.empty() && inst->unacked.front().epoch <= h.seq)
          inst->unacked.pop_front();
        if (inst->epochs.Advance()) SendProgress(*inst);
        ContinueMove(*inst);
        MaybeRelaunch(*inst);
      }
      return;
    }
    case hot::Type::kCopyKeys: {
      for (auto& [id, inst] : instances_)
        if (h.instance != 0 && inst->standby_handle == h.instance) return OnCopyKeys(*inst, frame->body);
      return;
    }
    case hot::Type::kError: {
      auto m = hot::ParseError(frame->body);
      std::string what = m.ok() ? std::string(CodeName(m->code)) + ": " + m->message
                                : m.status().ToString();
      for (auto& [id, inst] : instances_) {
        if (h.instance != 0 && inst->standby_handle == h.instance && inst->moving &&
            inst->moving->move_sent) {
          Status refused(m.ok() ? m->code : Code::kInternal,
                         "the standby refused the planned failover: " + what);
          for (ConnRef ref : inst->moving->waiters) SendTo(ref, ipc::ErrorMessage(refused));
          inst->moving.reset();
          inst->rec.state = InstanceState::kFailed;
          inst->rec.reason = refused.message() + "; its process was stopped here: `spare run` it "
                                                 "again";
          spdlog::error("instance {}: {}", id, inst->rec.reason);
          SaveStateOrLog();
        }
        if (h.instance != 0 && inst->standby_handle == h.instance) {
          inst->ship_errors++;
          if (inst->copy && (h.seq == inst->copy->seq || h.seq == inst->copy->epoch)) {
            EndFullCopy(*inst, false);
            BlockCopy(*inst);
          }
        }
        if (auto it = hot_->reserving.find(h.seq); it != hot_->reserving.end() && it->second == id) {
          inst->standby_reserving = false;
          hot_->reserving.erase(it);
        }
      }
      spdlog::error("standby refused request seq {} (instance handle {}): {}; outputs that "
                    "depend on it stay held",
                    h.seq, h.instance, what);
      return;
    }
    case hot::Type::kFenced: {
      auto m = hot::ParseFenced(frame->body);
      const std::string why = m.ok() ? m->reason : "(unreadable Fenced: " + m.status().ToString() + ")";
      std::string id;
      if (auto it = hot_->reserving.find(h.seq); h.instance == 0 && it != hot_->reserving.end()) {
        id = it->second;
        hot_->reserving.erase(it);
      }
      for (auto& [iid, inst] : instances_)
        if ((h.instance != 0 && inst->standby_handle == h.instance) || iid == id)
          return OnFenced(*inst, why);
      return;
    }
    default:
      return;  // heartbeats: hearing from the standby is all they are for
  }
}

std::optional<ipc::Message> Agent::OnFailover(Conn& conn, ipc::Message& msg) {
  ipc::Body b(msg.body, "Failover");
  auto reason = b.String("reason", "");
  if (!reason.ok()) return ipc::ErrorMessage(reason.status());
  // From the instance itself (Runtime::request_failover) or from the CLI.
  Instance* inst = nullptr;
  const bool from_instance = !conn.instance_id.empty();
  if (from_instance) {
    inst = FindMutable(conn.instance_id);
  } else {
    auto id = b.String("id");
    if (!id.ok()) return ipc::ErrorMessage(id.status());
    inst = FindMutable(*id);
    if (!inst)
      return ipc::ErrorMessage(
          Status(Code::kNotFound, "no instance '" + *id + "' (see `spare status`)"));
  }
  const std::string& id = inst->rec.spec.id;
  Status st = Status::Ok();
  if (inst->rec.spec.policy != "hot")
    st = Status(Code::kFailedPrecondition,
                "instance " + id + " runs under policy " + inst->rec.spec.policy +
                    ": only policy hot has a replica to fail over to");
  else if (!hot_ || !hot_->welcomed || hot_->suspected)
    st = Status(Code::kUnavailable, "the standby is not reachable now: instance " + id +
                                        " stays here (see `spare status`)");
  else if (!inst->pidfd.valid() || inst->rec.state != InstanceState::kRunning)
    st = Status(Code::kFailedPrecondition, "instance " + id + " is " +
                                               std::string(StateName(inst->rec.state)) +
                                               "; only a running instance can be moved");
  else if (inst->standby_handle == 0 || inst->copy || inst->standby_blocked)
    st = Status(Code::kUnavailable, "instance " + id +
                                        " is not protected yet (" +
                                        (inst->copy ? "full copy in progress" : "no replica") +
                                        "); try again once `spare status` says protected");
  else if (inst->moving)
    st = Status(Code::kAlreadyExists, "instance " + id + " is already being moved");
  if (!st.ok()) {
    spdlog::warn("failover of {} refused: {}", id, st.ToString());
    return ipc::ErrorMessage(st);
  }
  inst->moving = Instance::Moving{reason->empty() ? std::string(from_instance ? "requested by the program" : "`spare failover`") : *reason,
                                  std::chrono::steady_clock::now(), {}, false};
  if (!from_instance) inst->moving->waiters.push_back(RefOf(conn));
  spdlog::warn("instance {}: planned failover ({}): stopping it here; the standby launches it "
               "once it has every epoch",
               id, inst->moving->reason);
  // Killed, not asked: every epoch it committed is in staging and ships;
  // whatever it did after its last commit was never released to a client.
  (void)SignalPidfd(inst->pidfd.get(), SIGKILL);
  if (from_instance) return ipc::OkMessage({{"id", id}, {"moving", true}});
  return std::nullopt;  // answered once moved (OnFenced)
}

// After the process is gone: once every epoch it committed is acknowledged,
// the standby is told to move the instance (it fences this owner and
// launches the replacement; its Fenced answer ends the move here).
void Agent::ContinueMove(Instance& inst) {
  if (!inst.moving || inst.moving->move_sent || inst.pidfd.valid()) return;
  if (!inst.unacked.empty() || inst.copy || inst.standby_handle == 0 || !hot_) return;
  inst.moving->move_sent = true;
  SendToStandby(static_cast<uint8_t>(hot::Type::kMove), inst.standby_handle, inst.rec.generation,
                hot_->next_seq++, hot::Body(hot::Move{inst.moving->reason}));
}

// The standby has fenced this owner and launched the instance elsewhere:
// nothing it commits here will ever be acknowledged, so no output it holds
// may leave. It is killed now, not restarted, and its image (behind the
// replacement's) released; `spare run` starts it afresh.
void Agent::OnFenced(Instance& inst, const std::string& why) {
  InstanceRecord& r = inst.rec;
  if (r.fenced) return;
  r.fenced = true;
  if (inst.moving) {
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                                inst.moving->started)
                          .count();
    r.state = InstanceState::kStopped;
    r.reason = "moved to the spare host (planned failover: " + inst.moving->reason +
               "); it runs there now (`spare status` on the spare host)";
    spdlog::warn("instance {}: moved: stopped here, every epoch acknowledged and the standby "
                 "fenced this host in {:.1f} ms; the spare host launches it",
                 r.spec.id, ms);
    for (ConnRef ref : inst.moving->waiters)
      SendTo(ref, ipc::OkMessage({{"id", r.spec.id}, {"moved", true}, {"ms", ms},
                                  {"epoch", inst.standby_acked},
                                  {"standby", hot_->standby_name}}));
    inst.moving.reset();
  } else {
    r.state = InstanceState::kFailed;
    r.reason = "fenced by standby " + hot_->standby_name + ": " + why +
               ". Its replacement runs on the spare host (`spare status` there); this host "
               "will not restart it, and no output it held was released";
    spdlog::error("instance {}: {}", r.spec.id, r.reason);
  }
  inst.standby_handle = 0;  // nothing more goes to the standby for it
  inst.standby_key.reset();
  inst.to_ship.clear();
  inst.unacked.clear();
  inst.copy.reset();
  inst.held.clear();
  inst.relaunch_pending = false;
  if (inst.pidfd.valid()) (void)SignalPidfd(inst.pidfd.get(), SIGKILL);
  AnswerRun(inst, Status(Code::kStaleGeneration, r.reason));
  ReleaseImage(inst);
  SaveStateOrLog();
}

}  // namespace spare::agent
