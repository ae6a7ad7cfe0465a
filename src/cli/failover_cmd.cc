// `spare failover`: moves a hot instance to the spare host, losing nothing.
#include <cstdio>
#include <memory>

#include "cli/client.h"
#include "cli/commands.h"
#include "ipc/body.h"

namespace spare::cli {
namespace {

struct FailoverFlags {
  std::string agent;
  std::string id;
  std::string reason;
  int timeout_ms = 30000;
};

int RunFailover(const FailoverFlags& f) {
  auto dir = AgentDir(f.agent);
  if (!dir.ok()) return Fail(dir.status());
  ipc::Message request;
  request.type = ipc::MsgType::kFailover;
  request.body = {{"id", f.id}, {"reason", f.reason.empty() ? "`spare failover`" : f.reason}};
  bool timed_out = false;
  auto reply = Call(*dir, request, f.timeout_ms, &timed_out);
  if (!reply.ok()) {
    if (timed_out)
      return Fail(Status(Code::kUnavailable,
                         "no answer within " + std::to_string(f.timeout_ms) + " ms: the move of " +
                             f.id + " may still complete; see `spare status` here and on the "
                                    "spare host"));
    return Fail(reply.status().With("failing " + f.id + " over"));
  }
  ipc::Body b(reply->body, "Failover answer");
  auto ms = b.Number("ms", 0);
  auto epoch = b.Uint("epoch", 0);
  auto standby = b.String("standby", "?");
  std::printf("moved %s: stopped here, epoch %llu acknowledged by standby %s, handed over in "
              "%.1f ms; it runs on the spare host now\n",
              f.id.c_str(), static_cast<unsigned long long>(epoch.ok() ? *epoch : 0),
              standby.ok() ? standby->c_str() : "?", ms.ok() ? *ms : 0.0);
  return 0;
}

}  // namespace

Command AddFailoverCommand(CLI::App& app) {
  auto f = std::make_shared<FailoverFlags>();
  CLI::App* sub = app.add_subcommand(
      "failover",
      "Move a --policy hot instance to the spare host now (a planned failover: maintenance, a "
      "host about to go). The agent stops the instance, waits until the standby has "
      "acknowledged every epoch it committed, then has the standby fence this host and launch "
      "the instance on the spare host at the same addresses from that epoch: nothing a "
      "client was told is lost, and no reply is released twice. Clients reconnect to the spare "
      "host. Refused, changing nothing, when the instance is not protected (no standby, a full "
      "copy in progress) or not running.");
  sub->add_option("--agent", f->agent, "agent directory (default: $SPARE_AGENT)");
  auto* positional = sub->add_option("id", f->id, "instance id (or --id)");
  sub->add_option("--id", f->id, "instance id")->excludes(positional);
  sub->callback([sub] {
    if (sub->count("id") + sub->count("--id") == 0)
      throw CLI::RequiredError("an instance id (spare failover ID, or --id ID)");
  });
  sub->add_option("--reason", f->reason, "why, for the logs and the instance's status");
  sub->add_option("--timeout-ms", f->timeout_ms, "how long to wait for the move")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  sub->footer("Example:\n  spare failover kv1 --agent /run/spare --reason \"kernel upgrade\"");
  return {sub, [f] { return RunFailover(*f); }};
}

}  // namespace spare::cli
