// `spare status`: what the agent's instances are doing.
#include <cstdio>
#include <memory>

#include "cli/client.h"
#include "cli/commands.h"
#include "ipc/body.h"

namespace spare::cli {
namespace {

struct StatusFlags {
  std::string agent;
  bool json = false;
};

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// "3/1/2" hits/stale/missing of config checkpoint lookups, then the keys
// stale at their last lookup; "-" before any lookup.
Result<std::string> ConfigCell(const ipc::Body& i) {
  SPARE_ASSIGN_OR_RETURN(double h, i.Number("config_hits", 0));
  SPARE_ASSIGN_OR_RETURN(double s, i.Number("config_stale", 0));
  SPARE_ASSIGN_OR_RETURN(double m, i.Number("config_missing", 0));
  if (h + s + m == 0) return std::string("-");
  std::string cell = Fixed(h, 0) + "/" + Fixed(s, 0) + "/" + Fixed(m, 0);
  std::vector<std::string> keys;
  if (i.Has("config_stale_keys")) {
    SPARE_ASSIGN_OR_RETURN(keys, i.StringArray("config_stale_keys"));
  }
  std::string list;
  for (const std::string& k : keys) list += (list.empty() ? "" : ",") + k;
  if (!list.empty()) cell += " stale:" + list;
  return cell;
}

// One table row; kBadMessage naming the field when the agent's answer lacks it.
Result<std::vector<std::string>> Row(const ipc::Body& i) {
  SPARE_ASSIGN_OR_RETURN(std::string id, i.String("id"));
  SPARE_ASSIGN_OR_RETURN(double pid, i.Number("pid"));
  SPARE_ASSIGN_OR_RETURN(std::string policy, i.String("policy"));
  SPARE_ASSIGN_OR_RETURN(std::string state, i.String("state"));
  SPARE_ASSIGN_OR_RETURN(double epoch, i.Number("epoch"));
  SPARE_ASSIGN_OR_RETURN(double durable, i.Number("durable_epoch", 0));
  SPARE_ASSIGN_OR_RETURN(double generation, i.Number("generation"));
  SPARE_ASSIGN_OR_RETURN(double restarts, i.Number("restarts"));
  SPARE_ASSIGN_OR_RETURN(std::optional<double> last, i.NullableNumber("last_restart_ms"));
  SPARE_ASSIGN_OR_RETURN(std::string tracker, i.String("tracker", ""));
  SPARE_ASSIGN_OR_RETURN(std::string reason, i.String("reason", ""));
  SPARE_ASSIGN_OR_RETURN(std::string config, ConfigCell(i));
  return std::vector<std::string>{id,
                                  pid > 0 ? Fixed(pid, 0) : "-",
                                  policy,
                                  state,
                                  Fixed(epoch, 0),
                                  Fixed(durable, 0),
                                  Fixed(generation, 0),
                                  Fixed(restarts, 0),
                                  last ? Fixed(*last, 2) : "-",
                                  tracker.empty() ? "-" : tracker,
                                  config,
                                  reason};
}

Status PrintTable(const nlohmann::json& instances) {
  std::vector<std::vector<std::string>> rows = {{"ID", "PID", "POLICY", "STATE", "EPOCH", "DURABLE",
                                                 "GEN", "RESTARTS", "LAST RESTART (ms)", "TRACKER",
                                                 "CONFIG H/S/M", "NOTE"}};
  for (size_t n = 0; n < instances.size(); ++n) {
    SPARE_ASSIGN_OR_RETURN(
        std::vector<std::string> row,
        Row(ipc::Body(instances[n], "Status: instances[" + std::to_string(n) + "]")));
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  for (const auto& r : rows) {
    std::string line;
    for (size_t c = 0; c < r.size(); ++c) {
      line += r[c];
      if (c + 1 < r.size()) line += std::string(width[c] - r[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  }
  return Status::Ok();
}

int RunStatus(const StatusFlags& f) {
  auto dir = AgentDir(f.agent);
  if (!dir.ok()) return Fail(dir.status());
  ipc::Message request;
  request.type = ipc::MsgType::kStatus;
  auto reply = Call(*dir, request, 5000);
  if (!reply.ok()) return Fail(reply.status());
  const nlohmann::json& body = reply->body;
  if (f.json) {
    std::printf("%s\n", body.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  auto instances = ipc::Body(body, "Status").Array("instances");
  if (!instances.ok()) return Fail(instances.status().With("the agent's answer"));
  if ((*instances)->empty()) {
    std::printf("no instances on the agent at %s (start one with `spare run`)\n", dir->c_str());
    return 0;
  }
  Status printed = PrintTable(**instances);
  if (!printed.ok()) return Fail(printed.With("the agent's answer"));
  const uint64_t omitted = body.value("/agent/instances_omitted"_json_pointer, uint64_t{0});
  if (omitted > 0)
    std::printf("(%llu ended instance(s) not shown: the answer would exceed the agent protocol's "
                "64 KiB; every live one is shown)\n",
                static_cast<unsigned long long>(omitted));
  return 0;
}

}  // namespace

Command AddStatusCommand(CLI::App& app) {
  auto f = std::make_shared<StatusFlags>();
  CLI::App* sub = app.add_subcommand(
      "status",
      "Show what every instance of the agent is doing. One line each: its pid, policy, "
      "lifecycle state (starting, running, restarting, adopting, stopping, stopped, exited, "
      "failed), the newest epoch in "
      "its committed image, the newest durable one (outputs up to it may leave; with `local` "
      "the same once applied), its generation (one per launch), how often it was restarted and "
      "how long the last restart took (crash detected to re-attached), its dirty-page tracker, "
      "its configuration checkpoint lookups (CONFIG H/S/M: hits/stale/missing, then the keys "
      "stale at their last lookup) and a note saying why it is not running. --json prints the "
      "same as JSON with stable "
      "field names, plus its regions and apply counters.");
  sub->add_option("--agent", f->agent, "agent directory (default: $SPARE_AGENT)");
  sub->add_flag("--json", f->json, "print JSON instead of a table");
  sub->footer("Example:\n  spare status --agent /run/spare --json");
  return {sub, [f] { return RunStatus(*f); }};
}

}  // namespace spare::cli
