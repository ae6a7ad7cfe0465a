// `spare demo`: flags and help; the demo itself is in demo.cc.
#include <memory>

#include "cli/commands.h"
#include "cli/demo.h"

namespace spare::cli {

Command AddDemoCommand(CLI::App& app) {
  auto opt = std::make_shared<DemoOptions>();
  CLI::App* sub = app.add_subcommand(
      "demo",
      "Show what spare does, in one command, on this machine. Part 1 (policy local): a private "
      "agent in a temporary directory runs spare-kv (next to this binary), keys are written "
      "with redis-cli, then spare-kv is killed (kill -9) repeatedly while a writer keeps going; "
      "after each kill it measures the time until spare-kv answers again and checks every "
      "acknowledged key. Part 2 (policy hot): a spare host (`spare standby` and its agent) "
      "protects two primary agents with two spare-kv instances each, each under a pipelined "
      "write load; then one primary agent is killed with its instances: per instance it prints "
      "the failover time and its split (detection, fencing, launch, first attach), the writes "
      "acknowledged before the kill and how many of them the replacement has. Everything it "
      "started is stopped at the end. UCX over TCP unless UCX_TLS says otherwise. Needs "
      "redis-cli (redis-tools).");
  sub->add_option("--kills", opt->kills, "how many times to kill -9 spare-kv")
      ->check(CLI::Range(1, 100000));
  sub->add_option("--port", opt->port, "spare-kv port (default: a free one)")
      ->check(CLI::Range(0, 65535));
  sub->add_option("--dir", opt->dir, "agent directory (default: a new temporary one)");
  sub->add_flag("--keep", opt->keep, "leave the agent, spare-kv and the directory running");
  sub->add_flag("--local-only", opt->local_only, "part 1 only: no standby, no failover");
  sub->footer("Example:\n  spare demo --kills 10");
  return {sub, [opt] { return RunDemo(*opt); }};
}

}  // namespace spare::cli
