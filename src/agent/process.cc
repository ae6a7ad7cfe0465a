#include "agent/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/files.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern char** environ;

namespace spare::agent {
namespace {

// What a failed child reports through the pipe before _exit(127).
struct ChildFailure {
  int stage;  // 0 setup, 1 chdir, 2 exec
  int err;
};

// A descriptor >= 3, so dup2 onto 0..2 in the child never clobbers it.
Result<UniqueFd> OpenHigh(const char* path, int flags, int mode) {
  UniqueFd fd(::open(path, flags | O_CLOEXEC, mode));
  if (!fd.valid()) return Status::FromErrno(std::string("open ") + path, errno);
  if (fd.get() >= 3) return fd;
  UniqueFd high(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3));
  if (!high.valid()) return Status::FromErrno("fcntl F_DUPFD_CLOEXEC", errno);
  return high;
}

[[noreturn]] void ChildFail(int report, int stage, const char* what, const char* arg) {
  int err = errno;
  // Single-threaded parent, so these calls are safe after fork.
  dprintf(2, "spare: %s '%s': %s\n", what, arg, std::strerror(err));
  ChildFailure f{stage, err};
  ssize_t ignored = ::write(report, &f, sizeof(f));
  (void)ignored;
  _exit(127);
}

[[noreturn]] void RunChild(const LaunchRequest& req, char** argv, char** envp, int devnull, int log,
                           int report) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) ::signal(sig, SIG_DFL);
  ::setsid();
  int persona = ::personality(0xffffffff);
  if (persona != -1) ::personality(static_cast<unsigned long>(persona) | ADDR_NO_RANDOMIZE);
  if (::dup2(devnull, 0) < 0 || ::dup2(log, 1) < 0 || ::dup2(log, 2) < 0)
    ChildFail(report, 0, "cannot set up stdio for", argv[0]);
  // Anything the agent forgot to mark close-on-exec must not leak.
  ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
  if (::chdir(req.cwd.c_str()) != 0) ChildFail(report, 1, "cannot chdir to", req.cwd.c_str());
  environ = envp;  // execvp searches the instance's PATH, not the agent's
  ::execvp(argv[0], argv);
  ChildFail(report, 2, "cannot execute", argv[0]);
}

class ForkLauncher : public Launcher {
 public:
  Result<Launched> Launch(const LaunchRequest& req) override;
};

Result<Launched> ForkLauncher::Launch(const LaunchRequest& req) {
  if (req.argv.empty()) return Status(Code::kInvalidArgument, "empty command line");
  std::vector<char*> argv, envp;
  for (const auto& a : req.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : req.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  SPARE_ASSIGN_OR_RETURN(UniqueFd log,
                         OpenHigh(req.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644));
  SPARE_ASSIGN_OR_RETURN(UniqueFd devnull, OpenHigh("/dev/null", O_RDONLY, 0));
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno("pipe2", errno);
  UniqueFd rd(pipefd[0]), wr(pipefd[1]);
  pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno("fork", errno);
  if (pid == 0) RunChild(req, argv.data(), envp.data(), devnull.get(), log.get(), wr.get());
  wr.reset();
  ChildFailure f{};
  ssize_t n;
  do {
    n = ::read(rd.get(), &f, sizeof(f));
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof(f))) {
    ::waitpid(pid, nullptr, 0);  // it _exits right after reporting
    const std::string& what = f.stage == 1 ? req.cwd : req.argv[0];
    std::string verb = f.stage == 0   ? "cannot set up stdio for "
                       : f.stage == 1 ? "cannot chdir to "
                                      : "cannot execute ";
    Code code = f.err == ENOENT ? Code::kNotFound : Code::kInvalidArgument;
    return Status(code, verb + "'" + what + "': " + std::strerror(f.err));
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
