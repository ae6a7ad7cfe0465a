// `spare stop`: ends an instance and releases its committed image.
#include <cstdio>
#include <memory>

#include "cli/client.h"
#include "cli/commands.h"

namespace spare::cli {
namespace {

struct StopFlags {
  std::string agent;
  std::string id;
};

int RunStop(const StopFlags& f) {
  auto dir = AgentDir(f.agent);
  if (!dir.ok()) return Fail(dir.status());
  ipc::Message request;
  request.type = ipc::MsgType::kStop;
  request.body = {{"id", f.id}};
  auto reply = Call(*dir, request, 10000);
  if (!reply.ok()) return Fail(reply.status().With("stopping " + f.id));
  std::printf("stopped %s\n", f.id.c_str());
  return 0;
}

}  // namespace

Command AddStopCommand(CLI::App& app) {
  auto f = std::make_shared<StopFlags>();
  CLI::App* sub = app.add_subcommand(
      "stop",
      "Stop an instance for good. The agent sends it SIGTERM, then SIGKILL if it is still "
      "running 2 s later, does not restart it, and releases its committed image and staging "
      "memory. The instance stays listed as stopped; `spare run` with the same id starts it "
      "again from empty state. Returns once the process is gone.");
  sub->add_option("--agent", f->agent, "agent directory (default: $SPARE_AGENT)");
  sub->add_option("--id", f->id, "instance id")->required();
  sub->footer("Example:\n  spare stop --agent /run/spare --id kv1");
  return {sub, [f] { return RunStop(*f); }};
}

}  // namespace spare::cli
