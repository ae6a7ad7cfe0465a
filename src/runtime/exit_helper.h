// runtime/exit_helper.h — keeps a killed instance's exit fast at any size.
//
// When a process dies, the kernel tears its address space down in the exit
// path, before the process's files are closed and before its parent learns
// of the death: about 90 ns per mapped page here, so 320-350 ms for an
// instance holding 3.7 GiB (bench/results/idle_drop/exit_probe.cc), and the
// agent cannot relaunch it until that is done. Only the last user of an
// address space pays that cost.
//
// The ExitHelper is that last user: a process created with CLONE_VM that
// shares the instance's address space and does nothing but wait. When the
// instance is killed, its own exit only drops a reference (the agent sees
// the death within a few ms); the helper then notices that the instance is
// gone and exits, and the teardown runs in the helper, on whatever core is
// free, while the agent is already launching the replacement.
//
// The helper:
//   - closes every file descriptor it inherited except two: a pidfd of the
//     process, and the read end of a pipe whose write end only the process
//     holds (close-on-exec). It keeps no socket, memfd or userfaultfd open.
//     It ends when the pidfd says the whole process is gone — after every
//     thread of it has closed its files, so that no file's last reference
//     (a memfd of a GiB, whose pages the kernel then frees) is dropped in
//     the process's own exit path, ahead of its sockets: the agent's
//     liveness connection, an instance's listening port — or a second after
//     the pipe's end when the process lives on (it exec()ed). A fork()ed
//     child of the app holding the write end too does not keep it: the
//     pidfd ends it;
//   - starts with every signal blocked (the app's handlers, copied at
//     clone time, never run in it) and touches no memory but its own stack;
//   - is named "spare-exit" (comm) so ps and top show what it is.
// Its exit signal is 0: the instance is never sent SIGCHLD for it, and a
// waitpid(-1) in the app does not reap it. Orphaned by the instance's
// death, it is reparented to the nearest subreaper (the agent, which reaps
// it: agent.cc ReapOrphans) or to init.
//
// $SPARE_EXIT_HELPER=0 turns it off (the instance then pays its own
// teardown, as before).
#pragma once

#include <sys/types.h>

#include "common/fd.h"
#include "spare/status.h"

namespace spare {

class ExitHelper {
 public:
  ExitHelper() = default;
  ExitHelper(ExitHelper&& o) noexcept;
  ExitHelper& operator=(ExitHelper&& o) noexcept;
  ExitHelper(const ExitHelper&) = delete;
  ExitHelper& operator=(const ExitHelper&) = delete;
  // Kills the helper and reaps it (its exit costs nothing: the address
  // space is still in use by this process).
  ~ExitHelper();

  static Result<ExitHelper> Start();

  pid_t pid() const { return pid_; }

 private:
  void Stop();

  pid_t pid_ = 0;
  UniqueFd wake_;        // write end; closing it (or exit, or exec) ends the helper
  void* stack_ = nullptr;  // the helper's stack, in the shared address space
};

// $SPARE_EXIT_HELPER: 1 (default) or 0; kInvalidArgument names a bad value.
Result<bool> ExitHelperFromEnv();

}  // namespace spare
