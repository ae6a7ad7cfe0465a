#include "agent/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/files.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace spare::agent {
namespace {

// The instance's PATH lookup for argv[0] (execvp would use the agent's
// PATH; the instance's own is what `spare run` recorded).
std::string Resolve(const std::string& prog, const std::vector<std::string>& env) {
  if (prog.find('/') != std::string::npos) return prog;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const std::string& e : env)
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    std::string cand = (dir.empty() ? "." : dir) + "/" + prog;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return prog;  // posix_spawn reports ENOENT
}

// A line in the instance's log when it could not be started at all.
void LogFailure(const std::string& log_path, const std::string& text) {
  UniqueFd fd(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!fd.valid()) return;
  std::string line = "spare: " + text + "\n";
  ssize_t ignored = ::write(fd.get(), line.data(), line.size());
  (void)ignored;
}

// posix_spawn, not fork: the agent has worker threads (worker.h), and
// after a fork only async-signal-safe calls are allowed in the child;
// glibc's posix_spawn runs the child on a vfork-style clone (no copy of the
// agent's page tables) and returns once it has exec'd or failed, so the
// loop waits for the exec alone, not for a fork of a large process.
class ForkLauncher : public Launcher {
 public:
  ForkLauncher() {
    // Children inherit the persona and keep it across exec: every instance
    // starts with address-space randomization off (DESIGN §5b). The
    // agent's own layout is already fixed.
    int persona = ::personality(0xffffffff);
    if (persona != -1) ::personality(static_cast<unsigned long>(persona) | ADDR_NO_RANDOMIZE);
  }
  Result<Launched> Launch(const LaunchRequest& req) override;
};

Result<Launched> ForkLauncher::Launch(const LaunchRequest& req) {
  if (req.argv.empty()) return Status(Code::kInvalidArgument, "empty command line");
  struct stat st {};
  if (::stat(req.cwd.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
      ::access(req.cwd.c_str(), X_OK) != 0) {
    int err = errno ? errno : ENOTDIR;
    std::string text = "cannot chdir to '" + req.cwd + "': " + std::strerror(err);
    LogFailure(req.log_path, text);
    return Status(err == ENOENT ? Code::kNotFound : Code::kInvalidArgument, text);
  }
  std::vector<char*> argv, envp;
  for (const auto& a : req.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : req.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string prog = Resolve(req.argv[0], req.env);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, req.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addchdir_np(&fa, req.cwd.c_str());
  // Anything the agent forgot to mark close-on-exec must not leak.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  int err = ::posix_spawn(&pid, prog.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (err != 0) {
    std::string text = "cannot execute '" + req.argv[0] + "': " + std::strerror(err);
    LogFailure(req.log_path, text);
    return Status(err == ENOENT ? Code::kNotFound : Code::kInvalidArgument, text);
  }
  auto pidfd = PidfdOpen(pid);
  if (!pidfd.ok()) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return pidfd.status();
  }
  return Launched{pid, std::move(pidfd).value(), true};
}

}  // namespace

std::unique_ptr<Launcher> MakeForkLauncher() { return std::make_unique<ForkLauncher>(); }

Result<UniqueFd> PidfdOpen(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno == ESRCH) return Status(Code::kNotFound, "no process " + std::to_string(pid));
    return Status::FromErrno("pidfd_open " + std::to_string(pid), errno);
  }
  return UniqueFd(fd);
}

Result<uint64_t> ProcStartTime(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  SPARE_ASSIGN_OR_RETURN(std::optional<std::string> text, ReadFile(path));
  if (!text) return Status(Code::kNotFound, "no process " + std::to_string(pid));
  // "pid (comm) state ppid ...": comm may hold spaces and ')', so fields
  // are counted from the last ')'. Field 3 (state) is token 0; 22 is 19.
  size_t close = text->rfind(')');
  if (close == std::string::npos) return Status(Code::kInternal, "unreadable " + path);
  size_t pos = close + 1;
  for (int token = 0; token < 19; ++token) {
    pos = text->find(' ', pos + 1);
    if (pos == std::string::npos) return Status(Code::kInternal, "short " + path);
  }
  return std::strtoull(text->c_str() + pos + 1, nullptr, 10);
}

Result<UniqueFd> OpenPidfdIfStartedAt(pid_t pid, uint64_t start_time,
                                      const StartTimeReader& start_time_of) {
  const std::string who = "pid " + std::to_string(pid);
  auto same = [&](const char* when) -> Status {
    auto now = start_time_of(pid);
    if (!now.ok()) return Status(Code::kNotFound, who + " is gone (" + when + ")");
    if (*now != start_time)
      return Status(Code::kNotFound, who + " started at tick " + std::to_string(*now) + ", not " +
                                         std::to_string(start_time) + ": the number was reused (" +
                                         when + ")");
    return Status::Ok();
  };
  SPARE_RETURN_IF_ERROR(same("before opening its pidfd"));
  SPARE_ASSIGN_OR_RETURN(UniqueFd pidfd, PidfdOpen(pid));
  SPARE_RETURN_IF_ERROR(same("after opening its pidfd"));
  return pidfd;
}

std::string ExitInfo::Describe() const {
  switch (kind) {
    case kExited:
      return "exit status " + std::to_string(value);
    case kSignaled: {
      const char* name = sigabbrev_np(value);
      return "killed by signal " + std::to_string(value) +
             (name ? std::string(" (") + name + ")" : std::string());
    }
    case kUnknown:
      break;
  }
  return "unknown status (adopted, not a child of this agent)";
}

ExitInfo ReapPidfd(int pidfd, bool is_child) {
  ExitInfo out;
  if (!is_child) return out;
  siginfo_t info{};
  int r;
  // The pidfd is readable: the process has exited, so this does not block.
  do {
    r = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return out;
  if (info.si_code == CLD_EXITED) {
    out.kind = ExitInfo::kExited;
  } else if (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
    out.kind = ExitInfo::kSignaled;
  } else {
    return out;
  }
  out.value = info.si_status;
  return out;
}

Status SignalPidfd(int pidfd, int sig) {
  if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) != 0) {
    if (errno == ESRCH) return Status::Ok();  // already gone: its pidfd will say so
    return Status::FromErrno("pidfd_send_signal", errno);
  }
  return Status::Ok();
}

}  // namespace spare::agent
