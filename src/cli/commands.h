// cli/commands.h — the subcommands of `spare`. Each Add*Command registers
// its flags and help on the app and returns it with what runs it.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace spare::cli {

struct Command {
  CLI::App* sub;             // the registered subcommand
  std::function<int()> run;  // runs it once parsed; returns the exit code
};

Command AddAgentCommand(CLI::App& app);
Command AddRunCommand(CLI::App& app);
Command AddStatusCommand(CLI::App& app);
Command AddStopCommand(CLI::App& app);
Command AddFailoverCommand(CLI::App& app);
Command AddWhereCommand(CLI::App& app);
Command AddMetricsCommand(CLI::App& app);
Command AddStandbyCommand(CLI::App& app);
Command AddDemoCommand(CLI::App& app);  // demo_cmd.cc; the demo itself is demo.cc

}  // namespace spare::cli
