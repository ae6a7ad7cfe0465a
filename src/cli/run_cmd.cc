// `spare run`: asks the agent to launch and protect a program.
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "agent/checks.h"
#include "agent/options.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/launch_env.h"
#include "ipc/body.h"

extern char** environ;

namespace spare::cli {
namespace {

constexpr int kAttachTimeoutMs = 15000;

struct RunFlags {
  std::string agent;
  std::string id;
  std::string policy;
  std::optional<uint64_t> slots;
  std::optional<uint64_t> slot_size;  // bytes (CLI::AsSizeValue reads "16MiB")
  std::optional<uint64_t> max_restarts;
  std::optional<uint64_t> restart_window_s;
  std::vector<std::string> env;          // --env NAME=VALUE
  std::vector<std::string> env_inherit;  // --env-inherit NAME
  std::vector<std::string> command;
};

Result<ipc::Message> BuildRun(const RunFlags& f) {
  SPARE_RETURN_IF_ERROR(agent::CheckInstanceId(f.id).With("--id"));
  SPARE_RETURN_IF_ERROR(agent::CheckPolicy(f.policy).With("--policy"));
  char cwd[4096];
  if (!::getcwd(cwd, sizeof(cwd))) return Status::FromErrno("getcwd", errno);
  SPARE_ASSIGN_OR_RETURN(nlohmann::json env, LaunchEnvironment(environ, f.env, f.env_inherit));
  ipc::Message m;
  m.type = ipc::MsgType::kRun;
  m.body = {{"id", f.id}, {"policy", f.policy}, {"argv", f.command}, {"env", env}, {"cwd", cwd}};
  if (f.slots) m.body["slot_count"] = *f.slots;
  if (f.slot_size) m.body["slot_size"] = *f.slot_size;
  if (f.max_restarts) m.body["max_restarts"] = *f.max_restarts;
  if (f.restart_window_s) m.body["restart_window_ms"] = *f.restart_window_s * 1000;
  try {
    (void)m.body.dump();
  } catch (const nlohmann::json::exception&) {
    return Status(Code::kInvalidArgument, "the command line is not valid UTF-8");
  }
  return m;
}

int RunRun(const RunFlags& f) {
  auto dir = AgentDir(f.agent);
  if (!dir.ok()) return Fail(dir.status());
  auto request = BuildRun(f);
  if (!request.ok()) return Fail(request.status());
  bool timed_out = false;
  auto reply = Call(*dir, *request, kAttachTimeoutMs, &timed_out);
  if (timed_out) {
    std::fprintf(stderr,
                 "spare: instance %s did not attach within %d s. It was launched and may still "
                 "be running: look at %s/instances/%s/log (is the program linked with libspare "
                 "and does it call Runtime::Attach?). `spare status` shows it; `spare stop --id "
                 "%s` ends it.\n",
                 f.id.c_str(), kAttachTimeoutMs / 1000, dir->c_str(), f.id.c_str(), f.id.c_str());
    return 1;
  }
  if (!reply.ok()) return Fail(reply.status());
  ipc::Body b(reply->body, "Run answer");
  auto pid = b.Uint("pid");
  auto generation = b.Uint("generation");
  for (const Status& st : {pid.status(), generation.status()})
    if (!st.ok()) return Fail(st);
  std::printf("started %s pid %llu generation %llu\n", f.id.c_str(),
              static_cast<unsigned long long>(*pid), static_cast<unsigned long long>(*generation));
  return 0;
}

}  // namespace

Command AddRunCommand(CLI::App& app) {
  auto f = std::make_shared<RunFlags>();
  CLI::App* sub = app.add_subcommand(
      "run",
      "Launch a program under the agent and protect it. The agent starts CMD in your working "
      "directory with a small environment: your PATH, HOME, USER, LOGNAME, SHELL, LANG, "
      "LANGUAGE, LC_*, TZ, TMPDIR and SPARE_* variables, what --env-inherit and --env add, "
      "and SPARE_AGENT, SPARE_INSTANCE and SPARE_GENERATION. Nothing else of yours is passed "
      "(the environment is kept in DIR/state.json for restarts). stdout and stderr are "
      "appended to DIR/instances/ID/log. The command "
      "returns once the program has attached through libspare, printing its pid and "
      "generation; if it has not attached within 15 s it reports that and leaves it running. "
      "With --policy local a crashed program is restarted on this host from its last "
      "committed epoch, up to --max-restarts crashes within --restart-window seconds.");
  sub->add_option("--agent", f->agent, "agent directory (default: $SPARE_AGENT)");
  sub->add_option("--id", f->id, "instance id: letters, digits, '-', '_', '.'")->required();
  sub->add_option("--policy", f->policy, "protection policy: local (restart on this host) or hot (epochs shipped to the standby of an agent started with --standby; cold: not yet)")
      ->required();
  sub->add_option("--slots", f->slots, "staging slots (default: the agent's, 8)");
  sub->add_option("--slot-size", f->slot_size,
                  "bytes per staging slot, e.g. 16MiB (default: the agent's)")
      ->transform(CLI::AsSizeValue(/*kb_is_1000=*/false));
  sub->add_option("--max-restarts", f->max_restarts,
                  "crashes tolerated within the window before the instance is failed (default 5)");
  sub->add_option("--restart-window", f->restart_window_s,
                  "crash-loop window in seconds (default 60)");
  sub->add_option("--env", f->env,
                  "NAME=VALUE to set in the program's environment (repeatable; overrides an "
                  "inherited NAME)")
      ->allow_extra_args(false);
  sub->add_option("--env-inherit", f->env_inherit,
                  "pass your NAME on to the program as well (repeatable; an error if unset)")
      ->allow_extra_args(false);
  sub->add_option("command", f->command, "the program and its arguments, after --")->required();
  sub->footer(
      "Example:\n"
      "  spare run --agent /run/spare --id kv1 --policy local -- ./spare-kv --port 7001");
  return {sub, [f] { return RunRun(*f); }};
}

}  // namespace spare::cli
