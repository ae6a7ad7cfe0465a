// agent/process.h — starting, watching and reaping instance processes.
//
// The Launcher is the agent's one seam to process creation: the real one
// spawns (posix_spawn); unit tests inject one that hands back a process they
// control. Everything else here is a thin, checked wrapper of a syscall.
//
// Threading: the agent's loop thread only. Processes are created with
// posix_spawn, which is safe in the multi-threaded agent.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/fd.h"
#include "spare/status.h"

namespace spare::agent {

struct LaunchRequest {
  std::vector<std::string> argv;  // argv[0] is looked up in the env's PATH
  std::vector<std::string> env;   // "K=V", complete (SPARE_* included)
  std::string cwd;
  std::string log_path;  // stdout+stderr, appended
};

struct Launched {
  pid_t pid = 0;
  UniqueFd pidfd;
  bool is_child = true;  // waitid() can reap it
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  // Starts the process. Fails (kNotFound / kIoError naming the program)
  // when it cannot be executed; the failed child is already reaped then.
  virtual Result<Launched> Launch(const LaunchRequest& request) = 0;
};

// posix_spawn: setsid, ADDR_NO_RANDOMIZE (set on the agent once, inherited),
// stdin /dev/null, stdout+stderr appended to log_path, chdir(cwd), argv[0]
// looked up in env's PATH, exec with `env`. A cwd or exec failure is
// written to the log and returned; no child is left behind.
std::unique_ptr<Launcher> MakeForkLauncher();

// pidfd_open(2).
Result<UniqueFd> PidfdOpen(pid_t pid);
// Field 22 of /proc/PID/stat (start time in clock ticks since boot);
// kNotFound when the process does not exist.
Result<uint64_t> ProcStartTime(pid_t pid);

// A pidfd for `pid` only while it is the process that started at
// `start_time` (as ProcStartTime reads it): checks the start time, opens
// the pidfd, then checks again. A pid reused before the open fails the
// second check (the pidfd would point at the newcomer); once it passes,
// the pidfd pins the right process, whatever happens to the number.
// kNotFound (saying which check failed) when it is gone or another one.
// `start_time_of` is ProcStartTime but for tests.
using StartTimeReader = std::function<Result<uint64_t>(pid_t)>;
Result<UniqueFd> OpenPidfdIfStartedAt(pid_t pid, uint64_t start_time,
                                      const StartTimeReader& start_time_of = ProcStartTime);

// How a process ended.
struct ExitInfo {
  enum Kind { kExited, kSignaled, kUnknown } kind = kUnknown;
  int value = 0;  // exit status or signal number
  bool clean() const { return kind == kExited && value == 0; }
  // "exit status 3", "killed by signal 9 (KILL)", "unknown status (...)"
  std::string Describe() const;
};

// Reaps a child through its pidfd (waitid P_PIDFD, WEXITED|WNOHANG).
// For a process that is not our child (adopted), returns kUnknown.
ExitInfo ReapPidfd(int pidfd, bool is_child);
// pidfd_send_signal(2).
Status SignalPidfd(int pidfd, int sig);

}  // namespace spare::agent
