// Requests from instances: Attach, Region, Commit, ConfigGet, ConfigPut.
// Every handler validates everything before it changes anything, so a
// refused request leaves the instance exactly as it was.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cinttypes>
#include <cstring>

#include "agent/agent.h"
#include "agent/checks.h"
#include "agent/config_store.h"
#include "common/hex.h"
#include "ipc/body.h"
#include "region/mapping.h"

namespace spare::agent {
namespace {

// An Attach can carry the staging fd plus one fd per region.
constexpr size_t kMaxRegions = ipc::kMaxFds - 1;

nlohmann::json RegionsJson(const Instance& inst) {
  nlohmann::json out = nlohmann::json::array();
  for (const RegionRecord& r : inst.rec.regions)
    out.push_back({{"name", r.name}, {"index", r.index}, {"address", r.address}, {"size", r.size}});
  return out;
}

}  // namespace

Status Agent::CheckAttach(const Instance& inst, const Conn& conn, const ipc::Message& msg,
                          uint64_t pid, bool reattach) const {
  const InstanceRecord& r = inst.rec;
  const std::string& id = r.spec.id;
  if (msg.generation < r.generation)
    return Status(Code::kStaleGeneration,
                  "Attach from generation " + std::to_string(msg.generation) +
                      " refused: instance " + id + " is at generation " +
                      std::to_string(r.generation) + " (a newer launch owns it)");
  if (msg.generation > r.generation)
    return Status(Code::kFailedPrecondition,
                  "Attach from generation " + std::to_string(msg.generation) +
                      " refused: instance " + id + " was launched as generation " +
                      std::to_string(r.generation) + " (was SPARE_GENERATION changed?)");
  if (!IsLive(r.state) || r.state == InstanceState::kStopping)
    return Status(
        Code::kFailedPrecondition,
        "instance " + id + " is " + std::string(StateName(r.state)) + "; it cannot attach now");
  if (pid != static_cast<uint64_t>(r.pid))
    return Status(Code::kFailedPrecondition,
                  "instance " + id + " is pid " + std::to_string(r.pid) + " (generation " +
                      std::to_string(r.generation) + "); this Attach came from pid " +
                      std::to_string(pid) + " (only the launched process itself may attach)");
  if (conn.peer_pid > 0 && static_cast<uint64_t>(conn.peer_pid) != pid)
    return Status(Code::kFailedPrecondition, "Attach names pid " + std::to_string(pid) +
                                                 " but the socket's peer is pid " +
                                                 std::to_string(conn.peer_pid));
  bool needs_image = !inst.image_held() && (!r.regions.empty() || r.epoch > 0);
  if (needs_image && !reattach)
    return Status(Code::kFailedPrecondition,
                  "instance " + id +
                      " was adopted from a previous agent and must hand its "
                      "committed image back (Attach with reattach: true and its fds)");
  return Status::Ok();
}

// Takes over the fds a live instance hands back after an agent restart:
// [staging, region 0, region 1, ...]. Checks all of them before keeping any.
Status Agent::AdoptImage(Instance& inst, ipc::Message& msg, uint64_t durable_epoch) {
  size_t want = 1 + inst.rec.regions.size();
  if (msg.fds.size() != want)
    return Status(Code::kInvalidArgument,
                  "reattach carried " + std::to_string(msg.fds.size()) + " fds; instance " +
                      inst.rec.spec.id + " has " + std::to_string(inst.rec.regions.size()) +
                      " regions, so " + std::to_string(want) +
                      " are needed (staging, then each region in index order)");
  for (size_t i = 1; i < want; ++i) {
    const RegionRecord& r = inst.rec.regions[i - 1];
    SPARE_RETURN_IF_ERROR(region::CheckSealed(msg.fds[i].get()).With("region " + r.name));
    struct stat st {};
    if (::fstat(msg.fds[i].get(), &st) != 0) return Status::FromErrno("fstat region fd", errno);
    if (static_cast<uint64_t>(st.st_size) < r.size)
      return Status(Code::kInvalidArgument, "region " + r.name + " fd is " +
                                                std::to_string(st.st_size) + " bytes, the region " +
                                                std::to_string(r.size));
  }
  if (msg.blob.size() > epoch::kMaxRecord)
    return Status(Code::kInvalidArgument, "reattach record exceeds 64 KiB");
  SPARE_ASSIGN_OR_RETURN(StagingArea staging, StagingArea::Adopt(std::move(msg.fds[0])));
  const epoch::StagingView& v = staging.view();
  if (v.slot_count != inst.rec.spec.slot_count || v.slot_size != inst.rec.spec.slot_size) {
    spdlog::warn(
        "instance {}: staging handed back has {} slots of {} bytes (spec: {} of {}); "
        "using the area's own layout",
        inst.rec.spec.id, v.slot_count, v.slot_size, inst.rec.spec.slot_count,
        inst.rec.spec.slot_size);
    inst.rec.spec.slot_count = v.slot_count;
    inst.rec.spec.slot_size = v.slot_size;
  }
  inst.staging = std::move(staging);
  inst.region_fds.clear();
  for (size_t i = 1; i < want; ++i) inst.region_fds.push_back(std::move(msg.fds[i]));
  inst.rec.epoch = durable_epoch;
  inst.record = msg.blob;
  return Status::Ok();
}

ipc::Message Agent::AttachReply(Instance& inst, bool reattach) {
  const InstanceRecord& r = inst.rec;
  ipc::Message m = ipc::OkMessage({{"id", r.spec.id},
                                   {"generation", r.generation},
                                   {"resumed", r.epoch > 0},
                                   {"policy", r.spec.policy},
                                   {"epoch", r.epoch},
                                   {"slot_count", inst.staging.view().slot_count},
                                   {"slot_size", inst.staging.view().slot_size},
                                   {"regions", RegionsJson(inst)}});
  m.blob = inst.record;
  if (!reattach) m.fds.push_back(DupFd(inst.staging.fd()));
  return m;
}

std::optional<ipc::Message> Agent::OnAttach(Conn& conn, ipc::Message& msg) {
  ipc::Body b(msg.body, "Attach");
  auto id = b.String("id");
  auto pid = b.Uint("pid");
  auto reattach = b.Bool("reattach", false);
  auto tracker = b.String("tracker", "");
  auto durable = b.Uint("durable_epoch", 0);
  // The image holds every released epoch (released >= durable); its record
  // rides in the blob.
  auto released = b.Uint("released_epoch", durable.ok() ? *durable : 0);
  for (const Status& st : {id.status(), pid.status(), reattach.status(), tracker.status(),
                           durable.status(), released.status()})
    if (!st.ok()) return ipc::ErrorMessage(st);
  Instance* inst = FindMutable(*id);
  if (!inst)
    return ipc::ErrorMessage(Status(Code::kNotFound, "no instance '" + *id +
                                                         "' on this agent (instances are "
                                                         "started with `spare run`)"));
  Status st = CheckAttach(*inst, conn, msg, *pid, *reattach);
  // A reattaching instance keeps using the staging area and images it has
  // mapped, so the agent must take exactly those over.
  if (st.ok() && !inst->image_held())
    st = *reattach ? AdoptImage(*inst, msg, *released) : EnsureStaging(*inst);
  if (st.ok() && inst->applies_in_flight == 0 && inst->epochs.in_flight() == 0)
    inst->ResetImageState();  // a new process: nothing of the old one is queued
  if (!st.ok()) {
    spdlog::warn("instance {}: Attach from pid {} refused: {}", *id, *pid, st.ToString());
    return ipc::ErrorMessage(st);
  }
  if (Conn* old = ConnOf(inst->conn); old && old != &conn) old->instance_id.clear();
  conn.instance_id = *id;
  inst->conn = RefOf(conn);
  inst->tracker = *tracker;
  // Answer first: the instance is restarting and waits for this, while
  // OnAttached() logs and saves state.json.
  Send(conn, AttachReply(*inst, *reattach));
  OnAttached(*inst);
  return std::nullopt;
}

Result<Instance*> Agent::AttachedInstance(const Conn& conn, const ipc::Message& msg) {
  const char* what = ipc::MsgTypeName(msg.type);
  if (conn.instance_id.empty())
    return Status(Code::kFailedPrecondition,
                  std::string(what) + " before Attach: attach to the agent first");
  Instance* inst = FindMutable(conn.instance_id);
  if (!inst) return Status(Code::kNotFound, "instance " + conn.instance_id + " is gone");
  if (msg.generation < inst->rec.generation)
    return Status(Code::kStaleGeneration,
                  std::string(what) + " from generation " + std::to_string(msg.generation) +
                      " refused: instance " + inst->rec.spec.id + " is at generation " +
                      std::to_string(inst->rec.generation));
  if (msg.generation > inst->rec.generation)
    return Status(Code::kFailedPrecondition,
                  std::string(what) + " from generation " + std::to_string(msg.generation) +
                      " refused: instance " + inst->rec.spec.id + " is at generation " +
                      std::to_string(inst->rec.generation));
  if (inst->conn != RefOf(conn) || !inst->image_held())
    return Status(Code::kFailedPrecondition,
                  std::string(what) + " on a connection that no longer owns instance " +
                      inst->rec.spec.id + " (a newer Attach replaced it)");
  return inst;
}

std::optional<ipc::Message> Agent::OnRegion(Conn& conn, ipc::Message& msg) {
  auto found = AttachedInstance(conn, msg);
  if (!found.ok()) return ipc::ErrorMessage(found.status());
  Instance& inst = **found;
  ipc::Body b(msg.body, "Region");
  auto name = b.String("name");
  auto size = b.Uint("size");
  auto address = b.Uint("address", 0);
  for (const Status& st : {name.status(), size.status(), address.status()})
    if (!st.ok()) return ipc::ErrorMessage(st);
  Status st = CheckRegionName(*name);
  if (st.ok() && (*size == 0 || *size > region::kVaSpan))
    st = Status(Code::kInvalidArgument, "region " + *name + ": size " + std::to_string(*size) +
                                            " must be between 1 and " +
                                            std::to_string(region::kVaSpan) + " bytes");
  if (!st.ok()) return ipc::ErrorMessage(st);
  uint64_t rounded = region::RoundUpToPage(*size);
  for (size_t i = 0; i < inst.rec.regions.size(); ++i) {
    const RegionRecord& r = inst.rec.regions[i];
    if (r.name != *name) continue;
    if (r.size != rounded)
      return ipc::ErrorMessage(
          Status(Code::kInvalidArgument, "region " + r.name + " is " + std::to_string(r.size) +
                                             " bytes in the committed image, asked " +
                                             std::to_string(*size)));
    if (*address != 0 && *address != r.address)
      return ipc::ErrorMessage(
          Status(Code::kInvalidArgument, "region " + r.name + " is at " + Hex(r.address) +
                                             " in the committed image, asked " + Hex(*address)));
    ipc::Message reply = ipc::OkMessage({{"name", r.name},
                                         {"index", r.index},
                                         {"address", r.address},
                                         {"size", r.size},
                                         {"existed", true}});
    reply.fds.push_back(DupFd(inst.region_fds[i].get()));
    return reply;
  }
  return CreateRegion(inst, *name, rounded, *address);
}

// A new region: its memfd and address, remembered and persisted.
ipc::Message Agent::CreateRegion(Instance& inst, const std::string& name, uint64_t rounded,
                                 uint64_t address) {
  auto fail = [](const Status& st) { return ipc::ErrorMessage(st); };
  if (inst.rec.regions.size() >= kMaxRegions)
    return fail(Status(Code::kResourceExhausted, "instance " + inst.rec.spec.id + " already has " +
                                                     std::to_string(kMaxRegions) +
                                                     " regions, the most one reattach can carry"));
  uint64_t at = address ? address : region::DeriveAddress(inst.rec.spec.id, name, rounded);
  Status placed = CheckRegionPlacement(name, at, rounded, inst.rec.regions, address == 0);
  if (!placed.ok()) return fail(placed);
  auto memfd = region::CreateMemfd("spare-" + inst.rec.spec.id + "-" + name, rounded);
  if (!memfd.ok()) return ipc::ErrorMessage(memfd.status().With("region " + name));
  uint32_t index = static_cast<uint32_t>(inst.rec.regions.size());
  inst.rec.regions.push_back({name, index, at, rounded});
  inst.region_fds.push_back(std::move(memfd).value());
  // A replica reserved with fewer regions cannot take this one: reserve
  // again (the standby keeps no area of another geometry: retire first).
  if (inst.standby_reserving) {
    inst.standby_reserve_again = true;  // when its Reserved comes (hot_link.cc)
  } else if (inst.standby_handle != 0) {
    EndFullCopy(inst, /*done=*/false);
    RetireOnStandby(inst);
    inst.to_ship.assign(inst.unacked.begin(), inst.unacked.end());
    ReserveOnStandby(inst);
  }
  spdlog::info("instance {}: region {} created ({} bytes at {})", inst.rec.spec.id, name, rounded,
               Hex(at));
  SaveStateOrLog();
  ipc::Message reply = ipc::OkMessage(
      {{"name", name}, {"index", index}, {"address", at}, {"size", rounded}, {"existed", false}});
  reply.fds.push_back(DupFd(inst.region_fds.back().get()));
  return reply;
}

// Checks a Commit and queues its epoch for the apply worker (apply.cc).
// The answer comes later, in epoch order: Released and Durable, or an Error
// naming the epoch. Nothing here waits for the apply.
std::optional<ipc::Message> Agent::OnCommit(Conn& conn, ipc::Message& msg) {
  ipc::Body b(msg.body, "Commit");
  auto epoch = b.Uint("epoch");
  auto first_slot = b.Uint("first_slot");
  auto parts = b.Uint("parts");
  uint64_t named = epoch.ok() ? *epoch : 0;
  auto refuse = [&](const Status& st) {
    ipc::Message m = ipc::ErrorMessage(st);
    m.body["epoch"] = named;
    return m;
  };
  auto found = AttachedInstance(conn, msg);
  if (!found.ok()) return refuse(found.status());
  for (const Status& st : {epoch.status(), first_slot.status(), parts.status()})
    if (!st.ok()) return refuse(st);
  Instance& inst = **found;
  if (inst.rec.image_torn)
    return refuse(Status(Code::kTornImage, "instance " + inst.rec.spec.id +
                                               " has a torn image; no epoch is accepted"));
  const uint64_t last = inst.epochs.last();
  if (*epoch <= last) {
    // Re-sent after a reattach: already applied (answer again) or queued
    // (its completion answers).
    if (*epoch <= inst.epochs.released()) {
      inst.sent_released = std::min(inst.sent_released, *epoch - 1);
      inst.sent_durable = std::min(inst.sent_durable, *epoch - 1);
      SendProgress(inst);
    }
    return std::nullopt;
  }
  if (*epoch != last + 1)
    return refuse(Status(Code::kTornEpoch, "epoch " + std::to_string(*epoch) +
                                               " does not follow epoch " + std::to_string(last) +
                                               " (expected " + std::to_string(last + 1) +
                                               "); nothing applied"));
  uint32_t slots = inst.staging.view().slot_count;
  if (*first_slot >= slots || *parts == 0 || *parts > slots)
    return refuse(Status(Code::kInvalidArgument,
                         "epoch " + std::to_string(*epoch) + ": first_slot " +
                             std::to_string(*first_slot) + " / parts " + std::to_string(*parts) +
                             " do not fit the " + std::to_string(slots) + "-slot staging ring"));
  const Instance::Ship ship{*epoch, static_cast<uint32_t>(*first_slot),
                            static_cast<uint32_t>(*parts)};
  if (inst.copy) {
    inst.held.push_back(ship);  // applied once the full copy is done (full_copy.cc)
  } else {
    Status st = PostApply(inst, ship.epoch, ship.first_slot, ship.parts);
    if (!st.ok()) return refuse(st.With("queueing epoch " + std::to_string(*epoch)));
  }
  // Unprotected (--on-standby-loss=continue, no standby): durable once
  // applied here, and not shipped (a full copy resyncs the replica later).
  const bool hot = inst.rec.spec.policy == "hot" && !inst.unprotected;
  inst.epochs.Push(*epoch, /*needs_ack=*/hot);
  if (hot) {
    inst.unacked.push_back(ship);
    ShipEpoch(inst, ship.epoch, ship.first_slot, ship.parts);
  }
  return std::nullopt;
}

std::optional<ipc::Message> Agent::OnConfigGet(Conn& conn, ipc::Message& msg) {
  auto found = AttachedInstance(conn, msg);
  if (!found.ok()) return ipc::ErrorMessage(found.status());
  ipc::Body b(msg.body, "ConfigGet");
  auto key = b.String("key");
  auto fingerprint = b.Uint("fingerprint");
  for (const Status& st : {key.status(), fingerprint.status()})
    if (!st.ok()) return ipc::ErrorMessage(st);
  ConfigStore store(InstanceDir((*found)->rec.spec.id) + "/config");
  auto value = store.Get(*key, *fingerprint);
  if (!value.ok()) return ipc::ErrorMessage(value.status());
  Instance& inst = **found;
  auto& stale = inst.config_stale_keys;
  auto at = stale.begin();  // sorted, a handful of keys
  while (at != stale.end() && *at < *key) ++at;
  const bool listed = at != stale.end() && *at == *key;
  if (value->state == ConfigHit::kStale) {
    inst.config_stale++;
    if (!listed) stale.insert(at, *key);
  } else {
    (value->state == ConfigHit::kHit ? inst.config_hits : inst.config_missing)++;
    if (listed) stale.erase(at);
  }
  ipc::Message reply = ipc::OkMessage({{"state", std::string(ConfigHitName(value->state))}});
  reply.blob = std::move(value->blob);
  return reply;
}

std::optional<ipc::Message> Agent::OnConfigPut(Conn& conn, ipc::Message& msg) {
  auto found = AttachedInstance(conn, msg);
  if (!found.ok()) return ipc::ErrorMessage(found.status());
  ipc::Body b(msg.body, "ConfigPut");
  auto key = b.String("key");
  auto fingerprint = b.Uint("fingerprint");
  for (const Status& st : {key.status(), fingerprint.status()})
    if (!st.ok()) return ipc::ErrorMessage(st);
  // The write fsyncs (a checkpoint must survive a power loss): on the io
  // worker, answered from the loop when it is done.
  io_->Post([this, dir = InstanceDir((*found)->rec.spec.id) + "/config", key = *key,
             fingerprint = *fingerprint, blob = std::move(msg.blob), to = RefOf(conn)]() {
    Status st = ConfigStore(dir).Put(key, fingerprint, blob);
    return [this, st, to] {
      SendTo(to, st.ok() ? ipc::OkMessage(nlohmann::json::object()) : ipc::ErrorMessage(st));
    };
  });
  return std::nullopt;
}

}  // namespace spare::agent
