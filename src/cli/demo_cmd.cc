// `spare demo`: flags and help; the demo itself is in demo.cc.
#include <memory>

#include "cli/commands.h"
#include "cli/demo.h"

namespace spare::cli {

Command AddDemoCommand(CLI::App& app) {
  auto opt = std::make_shared<DemoOptions>();
  CLI::App* sub = app.add_subcommand(
      "demo",
      "Show what spare does, in one command. Starts a private agent in a temporary directory, "
      "runs spare-kv (next to this binary) under it with policy local, writes keys with "
      "redis-cli, then kill -9s spare-kv repeatedly while a writer keeps going. After each "
      "kill it measures the time until spare-kv answers again and checks that every "
      "acknowledged key came back with its value. Needs redis-cli (redis-tools).");
  sub->add_option("--kills", opt->kills, "how many times to kill -9 spare-kv")
      ->check(CLI::Range(1, 100000));
  sub->add_option("--port", opt->port, "spare-kv port (default: a free one)")
      ->check(CLI::Range(0, 65535));
  sub->add_option("--dir", opt->dir, "agent directory (default: a new temporary one)");
  sub->add_flag("--keep", opt->keep, "leave the agent, spare-kv and the directory running");
  sub->footer("Example:\n  spare demo --kills 10");
  return {sub, [opt] { return RunDemo(*opt); }};
}

}  // namespace spare::cli
