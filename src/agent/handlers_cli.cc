// Requests from the CLI: Run, Status, Stop.
#include <spdlog/spdlog.h>

#include <sys/stat.h>

#include <cerrno>

#include "agent/agent.h"
#include "agent/checks.h"
#include "common/files.h"
#include "epoch/staging.h"
#include "ipc/body.h"
#include "region/mapping.h"

namespace spare::agent {
namespace {

bool IsAgentVariable(const std::string& kv) {
  for (const char* name : {"SPARE_AGENT=", "SPARE_INSTANCE=", "SPARE_GENERATION="})
    if (kv.rfind(name, 0) == 0) return true;
  return false;
}

}  // namespace

Result<InstanceSpec> Agent::ParseRunSpec(const ipc::Message& msg) const {
  ipc::Body b(msg.body, "Run");
  InstanceSpec s;
  SPARE_ASSIGN_OR_RETURN(s.id, b.String("id"));
  SPARE_RETURN_IF_ERROR(CheckInstanceId(s.id));
  SPARE_ASSIGN_OR_RETURN(s.policy, b.String("policy", "local"));
  SPARE_RETURN_IF_ERROR(CheckPolicy(s.policy));
  if (s.policy == "hot" && options_.standby.empty())
    return Status(Code::kFailedPrecondition,
                  "policy hot needs a standby: start the agent with --standby HOST:PORT");
  SPARE_ASSIGN_OR_RETURN(s.argv, b.StringArray("argv"));
  if (s.argv.empty() || s.argv[0].empty())
    return Status(Code::kInvalidArgument, "Run: argv is empty (nothing to launch)");
  SPARE_ASSIGN_OR_RETURN(s.env, b.StringMap("env"));
  std::erase_if(s.env, IsAgentVariable);
  SPARE_ASSIGN_OR_RETURN(s.cwd, b.String("cwd"));
  if (s.cwd.empty() || s.cwd[0] != '/')
    return Status(Code::kInvalidArgument, "Run: cwd \"" + s.cwd + "\" is not an absolute path");
  SPARE_ASSIGN_OR_RETURN(uint64_t slots, b.Uint("slot_count", options_.slot_count));
  SPARE_RETURN_IF_ERROR(CheckSlotCount("slot_count", slots));
  s.slot_count = static_cast<uint32_t>(slots);
  SPARE_ASSIGN_OR_RETURN(s.slot_size, b.Uint("slot_size", options_.slot_size));
  SPARE_RETURN_IF_ERROR(CheckSlotSize("slot_size", s.slot_size));
  SPARE_ASSIGN_OR_RETURN(uint64_t restarts, b.Uint("max_restarts", options_.max_restarts));
  SPARE_RETURN_IF_ERROR(CheckMaxRestarts("max_restarts", restarts));
  s.max_restarts = static_cast<uint32_t>(restarts);
  SPARE_ASSIGN_OR_RETURN(s.restart_window_ms,
                         b.Uint("restart_window_ms", options_.restart_window_s * 1000));
  if (s.restart_window_ms < 1 || s.restart_window_ms > kMaxRestartWindowS * 1000)
    return Status(Code::kInvalidArgument,
                  "restart_window_ms = " + std::to_string(s.restart_window_ms) +
                      " is out of range (1 ms to 7 days)");
  return s;
}

std::optional<ipc::Message> Agent::OnRun(Conn& conn, ipc::Message& msg) {
  auto spec = ParseRunSpec(msg);
  if (!spec.ok()) return ipc::ErrorMessage(spec.status());
  const std::string id = spec->id;
  Instance* inst = FindMutable(id);
  if (inst && IsLive(inst->rec.state))
    return ipc::ErrorMessage(
        Status(Code::kAlreadyExists, "instance " + id + " is already " +
                                         std::string(StateName(inst->rec.state)) + " (pid " +
                                         std::to_string(inst->rec.pid) +
                                         "); stop it first with `spare "
                                         "stop --id " +
                                         id + "`"));
  Status st = MakeDirs(InstanceDir(id));
  if (!st.ok()) return ipc::ErrorMessage(st);
  bool fresh = inst == nullptr;
  if (fresh) {
    auto owned = std::make_unique<Instance>();
    inst = owned.get();
    instances_.emplace(id, std::move(owned));
  }
  // A failed or exited instance run again resumes from its committed image
  // (when this agent still holds it); its generation keeps counting up.
  inst->rec.spec = std::move(spec).value();
  inst->rec.restarts = 0;
  inst->rec.crash_times_ms.clear();
  inst->rec.reason.clear();
  inst->rec.fenced = false;  // an operator's fresh start (its image was released when fenced)
  inst->failover.reset();
  inst->last_restart_ms.reset();
  inst->crash_detected_at.reset();
  st = EnsureStaging(*inst);
  if (st.ok()) st = Launch(*inst);
  if (!st.ok()) {
    st = st.With("launching instance " + id);
    spdlog::warn("{}", st.ToString());
    if (fresh) {
      instances_.erase(id);
    } else {
      inst->rec.state = InstanceState::kFailed;
      inst->rec.reason = st.message();
      SaveStateOrLog();
    }
    return ipc::ErrorMessage(st);
  }
  inst->rec.state = InstanceState::kStarting;
  inst->pending_run = RefOf(conn);
  spdlog::info("instance {}: launched pid {} generation {} ({}){}", id, inst->rec.pid,
               inst->rec.generation, inst->rec.spec.argv[0],
               inst->rec.epoch ? ", resuming from epoch " + std::to_string(inst->rec.epoch) : "");
  SaveStateOrLog();
  return std::nullopt;  // answered once it attaches (OnAttached) or fails
}

std::optional<ipc::Message> Agent::OnStatus(Conn&, ipc::Message&) {
  return ipc::OkMessage(StatusJson(ipc::kMaxJson));
}

std::optional<ipc::Message> Agent::OnStop(Conn& conn, ipc::Message& msg) {
  auto id = ipc::Body(msg.body, "Stop").String("id");
  if (!id.ok()) return ipc::ErrorMessage(id.status());
  Instance* inst = FindMutable(*id);
  if (!inst)
    return ipc::ErrorMessage(
        Status(Code::kNotFound, "no instance '" + *id + "' (see `spare status`)"));
  if (inst->pidfd.valid()) {
    if (inst->rec.state != InstanceState::kStopping) {
      Status st = StartStop(*inst);
      if (!st.ok()) return ipc::ErrorMessage(st.With("stopping " + *id));
    }
    inst->stop_waiters.push_back(RefOf(conn));
    return std::nullopt;  // answered when the process is gone (FinishStop)
  }
  inst->rec.state = InstanceState::kStopped;
  inst->rec.reason = "stopped by `spare stop`";
  inst->rec.pid = 0;
  ReleaseImage(*inst);
  SaveStateOrLog();
  spdlog::info("instance {}: stopped (no process); committed image released", *id);
  return ipc::OkMessage({{"id", *id}, {"state", "stopped"}});
}

// A replica from the standby on this host becomes the instance's next
// generation here: [region fds] ride along, the record in the blob, the
// launch spec (as the primary's agent had it) and region table in the
// body. Everything is checked before anything is kept; the replacement
// runs under policy local on this host (no standby protects it here), and
// the answer goes back when it attaches (or fails), like Run's.
Status Agent::TakeOver(Conn& conn, ipc::Message& msg) {
  ipc::Body b(msg.body, "Takeover");
  SPARE_ASSIGN_OR_RETURN(std::string id, b.String("id"));
  SPARE_RETURN_IF_ERROR(CheckInstanceId(id));
  SPARE_ASSIGN_OR_RETURN(uint64_t epoch, b.Uint("epoch"));
  SPARE_ASSIGN_OR_RETURN(uint64_t generation, b.Uint("generation"));
  if (generation == 0)
    return Status(Code::kInvalidArgument, "Takeover of " + id + ": generation 0");
  SPARE_ASSIGN_OR_RETURN(std::string from, b.String("from", ""));
  SPARE_ASSIGN_OR_RETURN(std::string standby, b.String("standby", ""));
  SPARE_ASSIGN_OR_RETURN(double detection_ms, b.Number("detection_ms", 0));
  SPARE_ASSIGN_OR_RETURN(std::string detected_by, b.String("detected_by", ""));
  SPARE_ASSIGN_OR_RETURN(double fencing_ms, b.Number("fencing_ms", 0));
  auto spec_json = msg.body.find("spec");
  if (spec_json == msg.body.end() || !spec_json->is_object())
    return Status(Code::kBadMessage, "Takeover of " + id + ": field \"spec\" is not an object");
  ipc::Message run;
  run.body = *spec_json;
  run.body["id"] = id;
  run.body["policy"] = "local";  // nothing protects it beyond this host
  auto parsed = ParseRunSpec(run);
  if (!parsed.ok()) return parsed.status().With("Takeover of " + id);
  InstanceSpec spec = std::move(parsed).value();
  std::vector<RegionRecord> regions;
  auto table = run.body.find("regions");
  if (table == run.body.end() || !table->is_array())
    return Status(Code::kBadMessage, "Takeover of " + id + ": spec has no \"regions\" array");
  for (const auto& r : *table) {
    if (!r.is_object()) return Status(Code::kBadMessage, "Takeover of " + id + ": a region is not an object");
    ipc::Body rb(r, "Takeover region");
    RegionRecord rec;
    SPARE_ASSIGN_OR_RETURN(rec.name, rb.String("name"));
    SPARE_ASSIGN_OR_RETURN(uint64_t index, rb.Uint("index"));
    SPARE_ASSIGN_OR_RETURN(rec.address, rb.Uint("address"));
    SPARE_ASSIGN_OR_RETURN(rec.size, rb.Uint("size"));
    SPARE_RETURN_IF_ERROR(CheckRegionName(rec.name));
    if (index != regions.size())
      return Status(Code::kInvalidArgument, "Takeover of " + id + ": region " + rec.name +
                                                " has index " + std::to_string(index) + ", not " +
                                                std::to_string(regions.size()));
    rec.index = static_cast<uint32_t>(index);
    if (rec.size == 0 || rec.size % region::kPageSize != 0)
      return Status(Code::kInvalidArgument, "Takeover of " + id + ": region " + rec.name +
                                                " size " + std::to_string(rec.size) +
                                                " is not a non-zero page multiple");
    SPARE_RETURN_IF_ERROR(CheckRegionPlacement(rec.name, rec.address, rec.size, regions));
    regions.push_back(std::move(rec));
  }
  if (msg.fds.size() != regions.size())
    return Status(Code::kInvalidArgument,
                  "Takeover of " + id + " carried " + std::to_string(msg.fds.size()) +
                      " fds for " + std::to_string(regions.size()) + " regions");
  for (size_t i = 0; i < regions.size(); ++i) {
    SPARE_RETURN_IF_ERROR(region::CheckSealed(msg.fds[i].get()).With("replica of " + regions[i].name));
    struct stat st {};
    if (::fstat(msg.fds[i].get(), &st) != 0) return Status::FromErrno("fstat replica fd", errno);
    if (static_cast<uint64_t>(st.st_size) < regions[i].size)
      return Status(Code::kInvalidArgument, "replica of region " + regions[i].name + " is " +
                                                std::to_string(st.st_size) + " bytes, the region " +
                                                std::to_string(regions[i].size));
  }
  if (msg.blob.size() > epoch::kMaxRecord)
    return Status(Code::kInvalidArgument, "Takeover record exceeds 64 KiB");
  Instance* inst = FindMutable(id);
  if (inst && IsLive(inst->rec.state))
    return Status(Code::kAlreadyExists, "instance " + id + " is already " +
                                            std::string(StateName(inst->rec.state)) +
                                            " on this agent (pid " + std::to_string(inst->rec.pid) +
                                            "); stop it before a replica can take over");
  SPARE_RETURN_IF_ERROR(MakeDirs(InstanceDir(id)));
  const auto received = std::chrono::steady_clock::now();
  bool fresh = inst == nullptr;
  if (fresh) {
    auto owned = std::make_unique<Instance>();
    inst = owned.get();
    instances_.emplace(id, std::move(owned));
  } else {
    ReleaseImage(*inst);  // an old image of this id here is behind the replica
  }
  inst->rec = InstanceRecord{};
  inst->rec.spec = std::move(spec);
  inst->rec.regions = std::move(regions);
  inst->rec.epoch = epoch;
  inst->rec.generation = generation - 1;  // Launch makes it `generation`
  inst->region_fds.clear();
  for (auto& fd : msg.fds) inst->region_fds.push_back(std::move(fd));
  inst->record = std::move(msg.blob);
  inst->last_restart_ms.reset();
  inst->crash_detected_at.reset();
  inst->failover = Instance::Failover{from,       standby,    epoch,   detection_ms,
                                        detected_by, fencing_ms, received};
  Status st = EnsureStaging(*inst);
  if (st.ok()) st = Launch(*inst);
  if (!st.ok()) {
    inst->rec.state = InstanceState::kFailed;
    inst->rec.reason = "failover launch failed: " + st.message();
    SaveStateOrLog();
    return st.With("launching the replacement of " + id);
  }
  inst->failover->launch_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - received).count();
  inst->rec.state = InstanceState::kStarting;
  inst->pending_run = RefOf(conn);
  spdlog::warn("instance {}: failing over here from {} (standby {}): launched pid {} generation {} "
               "from the replica at epoch {}",
               id, from.empty() ? "?" : from, standby.empty() ? "?" : standby, inst->rec.pid,
               inst->rec.generation, epoch);
  SaveStateOrLog();
  return Status::Ok();
}

std::optional<ipc::Message> Agent::OnTakeover(Conn& conn, ipc::Message& msg) {
  Status st = TakeOver(conn, msg);
  if (st.ok()) return std::nullopt;  // answered when the replacement attaches
  spdlog::error("Takeover refused: {}", st.ToString());
  return ipc::ErrorMessage(st);
}

}  // namespace spare::agent
