// spare — the command line: runs the per-host agent and talks to it.
// Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
#include <cstdio>
#include <memory>
#include <vector>

#include "cli/commands.h"
#include "cli/help_format.h"

int main(int argc, char** argv) {
  CLI::App app{
      "spare keeps the in-memory state of running programs protected and brings a crashed "
      "program back in milliseconds from its last committed epoch.\n\n"
      "Start an agent on the host, then run programs linked with libspare under it:\n"
      "  spare agent --dir /run/spare &\n"
      "  spare run --agent /run/spare --id kv1 --policy local -- ./spare-kv --port 7001\n"
      "  spare status --agent /run/spare",
      "spare"};
  app.formatter(std::make_shared<spare::cli::HelpFormatter>());
  app.require_subcommand(1);
  app.fallthrough();
  std::vector<spare::cli::Command> commands = {
      spare::cli::AddAgentCommand(app),   spare::cli::AddRunCommand(app),
      spare::cli::AddStatusCommand(app),  spare::cli::AddStopCommand(app),
      spare::cli::AddMetricsCommand(app), spare::cli::AddStandbyCommand(app),
      spare::cli::AddFailoverCommand(app), spare::cli::AddWhereCommand(app),
  };
  commands.push_back(spare::cli::AddDemoCommand(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  for (auto& command : commands)
    if (command.sub->parsed()) return command.run();
  std::fprintf(stderr, "spare: no subcommand given (see spare --help)\n");
  return 2;
}
