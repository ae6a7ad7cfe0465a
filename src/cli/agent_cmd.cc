// `spare agent`: runs the per-host agent in the foreground.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>

#include "agent/agent.h"
#include "agent/options.h"
#include "cli/client.h"
#include "cli/commands.h"

namespace spare::cli {
namespace {

struct AgentFlags {
  std::string dir;
  std::string config;
  int metrics_port = -1;  // -1: from the config (default off)
  std::string metrics;    // HOST:PORT; empty: from the config
  std::string standby;    // HOST:PORT of the standby (policy hot)
  std::string on_standby_loss = "hold";
  std::string standby_error_mode = "none";
};

int RunAgent(const AgentFlags& flags) {
  agent::AgentOptions options;
  std::string config = flags.config;
  if (config.empty() && ::access((flags.dir + "/agent.toml").c_str(), F_OK) == 0)
    config = flags.dir + "/agent.toml";
  if (!config.empty()) {
    Status st = agent::LoadAgentConfig(config, &options);
    if (!st.ok()) return Fail(st);
  }
  options.dir = flags.dir;
  if (!flags.metrics.empty()) {
    if (flags.metrics_port >= 0)
      return Fail(
          Status(Code::kInvalidArgument, "pass --metrics HOST:PORT or --metrics-port, not both"));
    auto where = agent::ParseHostPort(flags.metrics);
    if (!where.ok()) return Fail(where.status());
    options.metrics_host = where->host;
    options.metrics_port = where->port;
  }
  if (flags.metrics_port >= 0) options.metrics_port = static_cast<uint16_t>(flags.metrics_port);
  if (!flags.standby.empty()) options.standby = flags.standby;
  options.continue_on_standby_loss = flags.on_standby_loss == "continue";
  options.standby_error_mode = flags.standby_error_mode == "none"   ? net::ErrorMode::kNone
                               : flags.standby_error_mode == "peer" ? net::ErrorMode::kPeer
                                                                    : net::ErrorMode::kAuto;
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  auto agent = agent::Agent::Create(std::move(options));
  if (!agent.ok()) {
    std::fprintf(stderr, "spare: agent not started: %s\n", agent.status().ToString().c_str());
    return agent.status().code() == Code::kInvalidArgument ? 2 : 1;
  }
  Status st = (*agent)->Run();
  if (!st.ok()) return Fail(st.With("agent loop"));
  return 0;
}

}  // namespace

Command AddAgentCommand(CLI::App& app) {
  auto flags = std::make_shared<AgentFlags>();
  CLI::App* sub = app.add_subcommand(
      "agent",
      "Run the per-host agent in the foreground. It creates DIR and listens on DIR/agent.sock, "
      "launches the programs `spare run` asks for, keeps their committed images (the state of "
      "their last epoch) in memory it owns, applies their epochs, and restarts a crashed "
      "program from its committed image. Logs go to stderr. SIGTERM or Ctrl-C stops the agent "
      "but leaves its instances running; the next agent started on DIR adopts them again.");
  sub->add_option("--dir", flags->dir, "agent directory (socket, state.json, instance logs)")
      ->required();
  sub->add_option("--config", flags->config,
                  "agent.toml with defaults: slot_count, slot_size, max_restarts, "
                  "restart_window_s, metrics_port, metrics_host (default: DIR/agent.toml if it "
                  "exists)")
      ->check(CLI::ExistingFile);
  sub->add_option("--metrics", flags->metrics,
                  "serve Prometheus text on http://HOST:PORT/metrics; HOST is an IPv4 address "
                  "(127.0.0.1: this host only; 0.0.0.0: every interface, reachable by anyone "
                  "who can reach the host) (overrides the config)");
  sub->add_option("--metrics-port", flags->metrics_port,
                  "the same on the configured metrics_host, by default 127.0.0.1 (0: off)")
      ->check(CLI::Range(0, 65535));
  sub->add_option("--standby", flags->standby,
                  "HOST:PORT of the `spare standby` that protects this agent's --policy hot "
                  "instances (UCX; pin the transport with UCX_TLS)");
  sub->add_option("--on-standby-loss", flags->on_standby_loss,
                  "what hot instances do while no standby acknowledges (unreachable past its "
                  "timeout): hold = keep every output until it is back (nothing a client saw "
                  "can be lost); continue = release outputs after the local apply alone, "
                  "UNPROTECTED against this host's failure (said in `spare status` and the "
                  "spare_instance_unprotected_seconds metric), protected again after the standby "
                  "returns and a full copy")
      ->check(CLI::IsMember({"hold", "continue"}))
      ->default_str("hold");
  sub->add_option("--standby-error-mode", flags->standby_error_mode,
                  "UCX error handling of the connection to the standby; must agree with the "
                  "standby's --error-mode (none, the default; peer; auto: NONE to a standby on "
                  "this host when UCX_TLS allows shared memory, PEER otherwise)")
      ->check(CLI::IsMember({"auto", "none", "peer"}))
      ->capture_default_str();
  sub->footer(
      "Example:\n"
      "  spare agent --dir /run/spare --config /etc/spare/agent.toml --metrics 127.0.0.1:9464");
  return {sub, [flags] { return RunAgent(*flags); }};
}

}  // namespace spare::cli
