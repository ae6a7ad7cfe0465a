// cli/subprocess.h — starting and waiting for child processes without a
// shell (for `spare demo`: the agent, spare-kv, redis-cli, `spare status`).
//
// Threading: callable from any thread; Spawn prepares everything before
// fork, so it is safe while other threads hold locks.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "spare/status.h"

namespace spare::cli {

// An executable by name in $PATH (a name holding '/' is taken as it is);
// nullopt when there is none.
std::optional<std::string> FindInPath(const std::string& name);

// Forks and execs argv[0] (a path, with this process's environment) with
// stdin/stdout/stderr set to in/out/err; new_session: setsid() first. The
// caller keeps its fds (close them after) and must reap the child.
Result<pid_t> Spawn(const std::vector<std::string>& argv, int in, int out, int err,
                    bool new_session);

struct ProcResult {
  int exit_code = 0;  // 128 + signal when killed
  std::string out;
  std::string err;
};
// exit status, or 128 + signal, of a waitpid() status.
int ExitCode(int wstatus);

// Runs argv to completion feeding it `input`, and captures its output.
// Past timeout_ms it is SIGKILLed and kUnavailable names argv[0].
Result<ProcResult> RunProcess(const std::vector<std::string>& argv, const std::string& input = "",
                              int timeout_ms = 30000);

// Waits up to timeout_ms for pid to exit; SIGKILLs (and reaps) it past that.
void Reap(pid_t pid, int timeout_ms);

}  // namespace spare::cli
