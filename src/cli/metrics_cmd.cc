// `spare metrics`: the agent's Prometheus metrics, once, on stdout.
#include <cstdio>
#include <memory>

#include "agent/status.h"
#include "cli/client.h"
#include "cli/commands.h"

namespace spare::cli {
namespace {

int RunMetrics(const std::string& agent) {
  auto dir = AgentDir(agent);
  if (!dir.ok()) return Fail(dir.status());
  ipc::Message request;
  request.type = ipc::MsgType::kStatus;
  auto reply = Call(*dir, request, 5000);
  if (!reply.ok()) return Fail(reply.status());
  auto text = agent::MetricsText(reply->body);
  if (!text.ok()) return Fail(text.status().With("the agent's Status answer"));
  std::fputs(text->c_str(), stdout);
  return 0;
}

}  // namespace

Command AddMetricsCommand(CLI::App& app) {
  auto agent = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand(
      "metrics",
      "Print the agent's metrics in Prometheus text format. One series per instance, labelled "
      "{instance=\"ID\",id=\"ID\"}: spare_instance_up, spare_epochs_applied_total, "
      "spare_bytes_applied_total, spare_apply_seconds_total, spare_restarts_total, "
      "spare_last_restart_seconds and spare_instance_epoch. An agent started with "
      "--metrics-port serves the same text at http://HOST:PORT/metrics for scraping.");
  sub->add_option("--agent", *agent, "agent directory (default: $SPARE_AGENT)");
  sub->footer("Example:\n  spare metrics --agent /run/spare | grep spare_restarts_total");
  return {sub, [agent] { return RunMetrics(*agent); }};
}

}  // namespace spare::cli
