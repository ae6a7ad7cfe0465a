#include "agent/state.h"

#include "agent/checks.h"
#include "common/files.h"
#include "ipc/body.h"

namespace spare::agent {
namespace {

constexpr InstanceState kAllStates[] = {InstanceState::kStarting,   InstanceState::kRunning,
                                        InstanceState::kRestarting, InstanceState::kAdopting,
                                        InstanceState::kStopping,   InstanceState::kStopped,
                                        InstanceState::kExited,     InstanceState::kFailed};

nlohmann::json SpecToJson(const InstanceSpec& s) {
  return {{"id", s.id},
          {"policy", s.policy},
          {"argv", s.argv},
          {"env", s.env},
          {"cwd", s.cwd},
          {"slot_count", s.slot_count},
          {"slot_size", s.slot_size},
          {"max_restarts", s.max_restarts},
          {"restart_window_ms", s.restart_window_ms}};
}

nlohmann::json RecordToJson(const InstanceRecord& r) {
  nlohmann::json regions = nlohmann::json::array();
  for (const RegionRecord& g : r.regions)
    regions.push_back(
        {{"name", g.name}, {"index", g.index}, {"address", g.address}, {"size", g.size}});
  return {{"spec", SpecToJson(r.spec)},
          {"state", std::string(StateName(r.state))},
          {"reason", r.reason},
          {"pid", r.pid},
          {"pid_start_time", r.pid_start_time},
          {"generation", r.generation},
          {"restarts", r.restarts},
          {"crash_times_ms", r.crash_times_ms},
          {"epoch", r.epoch},
          {"image_torn", r.image_torn},
          {"fenced", r.fenced},
          {"regions", regions}};
}

Result<uint32_t> Uint32(const ipc::Body& b, const char* key) {
  SPARE_ASSIGN_OR_RETURN(uint64_t v, b.Uint(key));
  if (v > UINT32_MAX)
    return Status(Code::kInvalidArgument, b.what() + ": " + key + " is too large");
  return static_cast<uint32_t>(v);
}

Result<InstanceSpec> SpecFromJson(const ipc::Body& b) {
  InstanceSpec s;
  SPARE_ASSIGN_OR_RETURN(s.id, b.String("id"));
  SPARE_RETURN_IF_ERROR(CheckInstanceId(s.id));
  SPARE_ASSIGN_OR_RETURN(s.policy, b.String("policy"));
  SPARE_RETURN_IF_ERROR(CheckPolicy(s.policy));
  SPARE_ASSIGN_OR_RETURN(s.argv, b.StringArray("argv"));
  SPARE_ASSIGN_OR_RETURN(s.env, b.StringArray("env"));
  SPARE_ASSIGN_OR_RETURN(s.cwd, b.String("cwd"));
  SPARE_ASSIGN_OR_RETURN(s.slot_count, Uint32(b, "slot_count"));
  SPARE_ASSIGN_OR_RETURN(s.slot_size, b.Uint("slot_size"));
  SPARE_ASSIGN_OR_RETURN(s.max_restarts, Uint32(b, "max_restarts"));
  SPARE_ASSIGN_OR_RETURN(s.restart_window_ms, b.Uint("restart_window_ms"));
  return s;
}

// One region of the table read so far (`before`, in index order): its
// index is its position, its name is new, and it overlaps none of them.
Result<RegionRecord> RegionFromJson(const ipc::Body& b, const std::vector<RegionRecord>& before) {
  RegionRecord g;
  SPARE_ASSIGN_OR_RETURN(g.name, b.String("name"));
  SPARE_ASSIGN_OR_RETURN(g.index, Uint32(b, "index"));
  SPARE_ASSIGN_OR_RETURN(g.address, b.Uint("address"));
  SPARE_ASSIGN_OR_RETURN(g.size, b.Uint("size"));
  SPARE_RETURN_IF_ERROR(CheckRegionName(g.name));
  if (g.index != before.size())
    return Status(Code::kInvalidArgument, "region " + g.name + " has index " +
                                              std::to_string(g.index) + " at position " +
                                              std::to_string(before.size()) +
                                              " (indexes must be 0, 1, 2... without gaps or "
                                              "repeats)");
  for (const RegionRecord& r : before)
    if (r.name == g.name)
      return Status(Code::kInvalidArgument, "region name " + g.name + " appears twice");
  SPARE_RETURN_IF_ERROR(CheckRegionPlacement(g.name, g.address, g.size, before));
  return g;
}

Result<InstanceRecord> RecordFromJson(const ipc::Body& b) {
  InstanceRecord r;
  SPARE_ASSIGN_OR_RETURN(ipc::Body spec, b.Object("spec"));
  SPARE_ASSIGN_OR_RETURN(r.spec, SpecFromJson(spec));
  SPARE_ASSIGN_OR_RETURN(std::string state, b.String("state"));
  auto parsed = StateFromName(state);
  if (!parsed) return Status(Code::kInvalidArgument, "unknown instance state \"" + state + "\"");
  r.state = *parsed;
  SPARE_ASSIGN_OR_RETURN(r.reason, b.String("reason"));
  SPARE_ASSIGN_OR_RETURN(uint64_t pid, b.Uint("pid"));
  if (pid > static_cast<uint64_t>(INT32_MAX))
    return Status(Code::kInvalidArgument, "pid " + std::to_string(pid) + " is not a pid");
  r.pid = static_cast<int64_t>(pid);
  SPARE_ASSIGN_OR_RETURN(r.pid_start_time, b.Uint("pid_start_time"));
  SPARE_ASSIGN_OR_RETURN(r.generation, b.Uint("generation"));
  SPARE_ASSIGN_OR_RETURN(r.restarts, Uint32(b, "restarts"));
  SPARE_ASSIGN_OR_RETURN(r.epoch, b.Uint("epoch"));
  SPARE_ASSIGN_OR_RETURN(r.image_torn, b.Bool("image_torn", false));
  SPARE_ASSIGN_OR_RETURN(r.fenced, b.Bool("fenced", false));
  SPARE_ASSIGN_OR_RETURN(r.crash_times_ms, b.IntArray("crash_times_ms"));
  SPARE_ASSIGN_OR_RETURN(const nlohmann::json* regions, b.Array("regions"));
  for (size_t i = 0; i < regions->size(); ++i) {
    ipc::Body g((*regions)[i], b.what() + ".regions[" + std::to_string(i) + "]");
    if (!(*regions)[i].is_object())
      return Status(Code::kInvalidArgument, g.what() + " is not an object");
    auto rr = RegionFromJson(g, r.regions);
    if (!rr.ok()) return rr.status().With("region " + std::to_string(i));
    r.regions.push_back(std::move(rr).value());
  }
  return r;
}

}  // namespace

std::string_view StateName(InstanceState s) {
  switch (s) {
    case InstanceState::kStarting:
      return "starting";
    case InstanceState::kRunning:
      return "running";
    case InstanceState::kRestarting:
      return "restarting";
    case InstanceState::kAdopting:
      return "adopting";
    case InstanceState::kStopping:
      return "stopping";
    case InstanceState::kStopped:
      return "stopped";
    case InstanceState::kExited:
      return "exited";
    case InstanceState::kFailed:
      return "failed";
  }
  return "unknown";
}

std::optional<InstanceState> StateFromName(std::string_view name) {
  for (InstanceState s : kAllStates)
    if (StateName(s) == name) return s;
  return std::nullopt;
}

bool IsLive(InstanceState s) {
  return s == InstanceState::kStarting || s == InstanceState::kRunning ||
         s == InstanceState::kRestarting || s == InstanceState::kAdopting ||
         s == InstanceState::kStopping;
}

nlohmann::json ToJson(const AgentStateValue& state) {
  nlohmann::json instances = nlohmann::json::array();
  for (const InstanceRecord& r : state.instances) instances.push_back(RecordToJson(r));
  return {{"version", state.version}, {"instances", instances}};
}

Result<AgentStateValue> StateFromJson(const nlohmann::json& json) {
  if (!json.is_object()) return Status(Code::kInvalidArgument, "state is not a JSON object");
  auto v = json.find("version");
  if (v == json.end() || !v->is_number_integer())
    return Status(Code::kInvalidArgument, "state has no version field");
  if (v->get<int64_t>() != kStateVersion)
    return Status(Code::kUnsupported, "state version " + std::to_string(v->get<int64_t>()) +
                                          " is not one this agent knows (it reads version " +
                                          std::to_string(kStateVersion) +
                                          "); use the spare release that wrote it");
  AgentStateValue out;
  auto list = json.find("instances");
  if (list == json.end() || !list->is_array())
    return Status(Code::kInvalidArgument, "state has no instances array");
  for (size_t i = 0; i < list->size(); ++i) {
    const nlohmann::json& j = (*list)[i];
    std::string where = "instance " + std::to_string(i);
    if (!j.is_object()) return Status(Code::kInvalidArgument, where + " is not an object");
    auto r = RecordFromJson(ipc::Body(j, "instance"));
    if (!r.ok()) return r.status().With(where);
    for (const InstanceRecord& other : out.instances)
      if (other.spec.id == r->spec.id)
        return Status(Code::kInvalidArgument,
                      where + ": instance id " + r->spec.id + " appears twice");
    out.instances.push_back(std::move(r).value());
  }
  return out;
}

std::string EncodeState(const AgentStateValue& state) {
  std::string text = ToJson(state).dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  return text;
}

Status SaveState(const std::string& path, const AgentStateValue& state) {
  return WriteState(path, EncodeState(state));
}

Status WriteState(const std::string& path, const std::string& text) {
  // No fsync: this value describes live processes and the memfds they and
  // the agent hold, all of which a power loss ends anyway; it must survive
  // an agent crash, which rename alone guarantees. An fsync here sat on the
  // restart path (crash, launch and attach all save) and cost 10-30 ms on
  // ext4 under load (docs/BENCHMARKS.md, restart on ext4 vs tmpfs).
  return WriteFileAtomic(path, text, 0600, Durability::kProcessCrash);
}

Result<std::optional<AgentStateValue>> LoadState(const std::string& path) {
  SPARE_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadFile(path));
  if (!text) return std::optional<AgentStateValue>();
  auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded())
    return Status(Code::kInvalidArgument, path +
                                              " is not valid JSON (move it away to start "
                                              "without the previous agent's instances)");
  auto st = StateFromJson(json);
  if (!st.ok()) return st.status().With(path);
  return std::optional<AgentStateValue>(std::move(st).value());
}

}  // namespace spare::agent
