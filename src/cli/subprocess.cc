#include "cli/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

extern char** environ;

namespace spare::cli {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Feeds `input` to stdin while collecting stdout and stderr until both
// close. Closes all three fds.
Status Pump(int in, int out, int err, const std::string& input, int timeout_ms,
            ProcResult* result) {
  int fds[3] = {out, err, input.empty() ? -1 : in};
  if (input.empty()) close(in);
  auto close_all = [&] {
    for (int& fd : fds) {
      if (fd >= 0) close(fd);
      fd = -1;
    }
  };
  size_t written = 0;
  auto start = Clock::now();
  char buf[16384];
  while (fds[0] >= 0 || fds[1] >= 0) {
    if (MsSince(start) > timeout_ms) {
      close_all();
      return Status(Code::kUnavailable, "timed out after " + std::to_string(timeout_ms) + " ms");
    }
    pollfd pfd[3] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}, {fds[2], POLLOUT, 0}};
    if (poll(pfd, 3, 50) < 0 && errno != EINTR) {
      close_all();
      return Status::FromErrno("poll", errno);
    }
    for (int i = 0; i < 2; ++i) {
      if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(pfd[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? result->out : result->err).append(buf, n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i]);
        fds[i] = -1;
      }
    }
    if (fds[2] >= 0 && (pfd[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t n = write(fds[2], input.data() + written, input.size() - written);
      if (n > 0) written += n;
      if (n < 0 || written == input.size()) {
        close(fds[2]);
        fds[2] = -1;
      }
    }
  }
  close_all();
  return Status::Ok();
}

}  // namespace

// Finds an executable by name in $PATH (or takes a path as it is).
std::optional<std::string> FindInPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = std::min(dirs.find(':', start), dirs.size());
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return std::nullopt;
}

// Forks and execs argv[0] (a path) with stdin/stdout/stderr set to the given
// fds. Everything the child needs is prepared before fork: the writer thread
// may hold locks.
Result<pid_t> Spawn(const std::vector<std::string>& argv, int in, int out, int err,
                    bool new_session) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return Status::FromErrno("fork", errno);
  if (pid == 0) {
    if (new_session) setsid();
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    close_range(3, ~0U, 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execve(args[0], args.data(), environ);
    dprintf(2, "exec %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

int ExitCode(int wstatus) {
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

// Runs argv to completion and captures its output.
Result<ProcResult> RunProcess(const std::vector<std::string>& argv, const std::string& input,
                              int timeout_ms) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    return Status::FromErrno("pipe", errno);
  }
  auto pid = Spawn(argv, in[0], out[1], err[1], false);
  close(in[0]), close(out[1]), close(err[1]);
  if (!pid.ok()) {
    close(in[1]), close(out[0]), close(err[0]);
    return pid.status();
  }
  ProcResult result;
  Status pumped = Pump(in[1], out[0], err[0], input, timeout_ms, &result);
  if (!pumped.ok()) kill(*pid, SIGKILL);
  int wstatus = 0;
  while (waitpid(*pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!pumped.ok()) return pumped.With(argv[0]);
  result.exit_code = ExitCode(wstatus);
  return result;
}

// Waits up to timeout_ms for pid to exit; SIGKILLs it past that.
void Reap(pid_t pid, int timeout_ms) {
  auto start = Clock::now();
  int wstatus;
  while (waitpid(pid, &wstatus, WNOHANG) == 0) {
    if (MsSince(start) > timeout_ms) {
      kill(pid, SIGKILL);
      waitpid(pid, &wstatus, 0);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace spare::cli
