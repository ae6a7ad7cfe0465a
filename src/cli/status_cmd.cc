// `spare status`: what the agent's instances are doing.
#include <cstdio>
#include <memory>

#include "cli/client.h"
#include "cli/commands.h"

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
std::string ConfigCell(const nlohmann::json& i) {
  double h = NumField(i, "config_hits"), s = NumField(i, "config_stale"),
         m = NumField(i, "config_missing");
  if (h + s + m == 0) return "-";
  std::string cell = Fixed(h, 0) + "/" + Fixed(s, 0) + "/" + Fixed(m, 0);
  auto it = i.find("config_stale_keys");
  if (it != i.end() && it->is_array() && !it->empty()) {
    std::string keys;
    for (const auto& k : *it)
      if (k.is_string()) keys += (keys.empty() ? "" : ",") + k.get<std::string>();
    cell += " stale:" + keys;
  }
  return cell;
}

std::vector<std::string> Row(const nlohmann::json& i) {
  double pid = NumField(i, "pid");
  auto last = OptNumField(i, "last_restart_ms");
  std::string tracker = StrField(i, "tracker");
  return {StrField(i, "id"),
          pid > 0 ? Fixed(pid, 0) : "-",
          StrField(i, "policy"),
          StrField(i, "state"),
          Fixed(NumField(i, "epoch"), 0),
          Fixed(NumField(i, "durable_epoch"), 0),
          Fixed(NumField(i, "generation"), 0),
          Fixed(NumField(i, "restarts"), 0),
          last ? Fixed(*last, 2) : "-",
          tracker.empty() ? "-" : tracker,
          ConfigCell(i),
          StrField(i, "reason")};
}

void PrintTable(const nlohmann::json& instances) {
  std::vector<std::vector<std::string>> rows = {{"ID", "PID", "POLICY", "STATE", "EPOCH", "DURABLE",
                                                 "GEN", "RESTARTS", "LAST RESTART (ms)", "TRACKER",
                                                 "CONFIG H/S/M", "NOTE"}};
  for (const auto& i : instances) rows.push_back(Row(i));
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
  const nlohmann::json empty = nlohmann::json::array();
  const nlohmann::json& instances =
      body.contains("instances") && body["instances"].is_array() ? body["instances"] : empty;
  if (instances.empty()) {
    std::printf("no instances on the agent at %s (start one with `spare run`)\n", dir->c_str());
    return 0;
  }
  PrintTable(instances);
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
