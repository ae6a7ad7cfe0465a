// `spare where`: where an instance runs now, and the address to reach it.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/client.h"
#include "cli/commands.h"
#include "ipc/body.h"

namespace spare::cli {
namespace {

struct WhereFlags {
  std::string agent;
  std::string id;
  bool json = false;
};

std::string Join(const nlohmann::json& list) {
  std::string out;
  if (!list.is_array()) return out;
  for (const auto& a : list)
    if (a.is_string()) out += (out.empty() ? "" : ", ") + a.get<std::string>();
  return out;
}

// "10.9.0.2" from "10.9.0.2:7700".
std::string HostOf(const std::string& address) {
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

int RunWhere(const WhereFlags& f) {
  auto dir = AgentDir(f.agent);
  if (!dir.ok()) return Fail(dir.status());
  ipc::Message request;
  request.type = ipc::MsgType::kStatus;
  auto reply = Call(*dir, request, 5000);
  if (!reply.ok()) return Fail(reply.status());
  const nlohmann::json& body = reply->body;
  const nlohmann::json* inst = nullptr;
  if (body.contains("instances") && body["instances"].is_array())
    for (const auto& i : body["instances"])
      if (i.value("id", "") == f.id) inst = &i;
  if (!inst)
    return Fail(Status(Code::kNotFound, "no instance '" + f.id + "' on the agent at " + *dir +
                                            " (see `spare status`; after a failover ask the "
                                            "spare host's agent)"));
  const nlohmann::json agent = body.value("agent", nlohmann::json::object());
  const nlohmann::json standby = agent.value("standby", nlohmann::json());
  const std::string state = inst->value("state", "?");
  const bool fenced = inst->value("fenced", false);
  const bool here = !fenced && (state == "running" || state == "starting" ||
                                state == "restarting" || state == "adopting");
  nlohmann::json out = {{"id", f.id},
                        {"agent", *dir},
                        {"state", state},
                        {"generation", inst->value("generation", 0)},
                        {"where", here ? "here" : fenced ? "spare host" : "nowhere"}};
  if (here) {
    out["pid"] = inst->value("pid", 0);
    out["addresses"] = agent.value("addresses", nlohmann::json::array());
    if (inst->contains("failover") && !(*inst)["failover"].is_null())
      out["failed_over_from"] = (*inst)["failover"].value("from", "");
  } else if (fenced && standby.is_object()) {
    out["standby"] = standby.value("name", "");
    out["addresses"] = nlohmann::json::array({HostOf(standby.value("address", ""))});
  }
  if (!here) out["reason"] = inst->value("reason", "");
  if (f.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return here || fenced ? 0 : 1;
  }
  if (here) {
    std::printf("%s runs on this host (agent %s): pid %lld, generation %llu; reach it at %s%s\n",
                f.id.c_str(), dir->c_str(), static_cast<long long>(out["pid"].get<int64_t>()),
                static_cast<unsigned long long>(out["generation"].get<uint64_t>()),
                Join(out["addresses"]).c_str(),
                out.contains("failed_over_from")
                    ? (" (failed over here from " + out["failed_over_from"].get<std::string>() + ")")
                          .c_str()
                    : "");
    return 0;
  }
  if (fenced) {
    std::printf("%s is not here: it failed over to the spare host%s%s (this host was fenced at "
                "generation %llu); reach it there, and `spare where %s` on that host's agent "
                "says more\n",
                f.id.c_str(), out.contains("addresses") ? (" at " + Join(out["addresses"])).c_str() : "",
                out.contains("standby") ? (" (standby " + out["standby"].get<std::string>() + ")").c_str()
                                        : "",
                static_cast<unsigned long long>(out["generation"].get<uint64_t>()), f.id.c_str());
    return 0;
  }
  std::printf("%s does not run anywhere this agent knows of: it is %s here (%s)\n", f.id.c_str(),
              state.c_str(), out["reason"].get<std::string>().c_str());
  return 1;
}

}  // namespace

Command AddWhereCommand(CLI::App& app) {
  auto f = std::make_shared<WhereFlags>();
  CLI::App* sub = app.add_subcommand(
      "where",
      "Say where an instance runs now and the addresses to reach it: on this host (its pid, "
      "generation and this host's IPv4 addresses), or, after a failover fenced this host, on "
      "the spare host of its standby (the standby's address). Exit status 0 when it runs "
      "somewhere, 1 when it is stopped or failed here, 2 on a usage error. --json for scripts.");
  sub->add_option("id", f->id, "instance id")->required();
  sub->add_option("--agent", f->agent, "agent directory (default: $SPARE_AGENT)");
  sub->add_flag("--json", f->json, "print JSON (id, where: here | spare host | nowhere, "
                                   "addresses, pid, generation, standby, reason)");
  sub->footer("Example:\n  spare where kv1 --agent /run/spare\n"
              "  redis-cli -h $(spare where kv1 --json | jq -r '.addresses[0]') -p 7001 PING");
  return {sub, [f] { return RunWhere(*f); }};
}

}  // namespace spare::cli
