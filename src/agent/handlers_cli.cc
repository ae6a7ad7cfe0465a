// Requests from the CLI: Run, Status, Stop.
#include <spdlog/spdlog.h>

#include "agent/agent.h"
#include "agent/checks.h"
#include "agent/files.h"
#include "ipc/body.h"

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
  return ipc::OkMessage(StatusJson());
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

}  // namespace spare::agent
