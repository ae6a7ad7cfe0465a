// ExitHelper (runtime/exit_helper.h).
#include "runtime/exit_helper.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <new>
#include <utility>

namespace spare {
namespace {

constexpr size_t kStackSize = 64 << 10;

// At the bottom of the helper's stack mapping (shared: CLONE_VM).
struct HelperArgs {
  int pipe_fd = -1;  // the read end: EOF once no live process holds the write end
  int pidfd = -1;    // the process it serves: readable once every thread of it is gone
};

// After the pipe's end (an exec, or the fd table released by the last
// thread of a dying process): how long it waits for the process to be
// gone before it goes anyway (an exec'd process lives on).
constexpr long kAfterPipeNs = 1'000'000'000;

// Runs in the helper, on its own stack, in the instance's address space and
// with the TLS pointer of the thread that cloned it: raw system calls only,
// no allocation, no locks, and no errno unless a call fails (none of these
// can: the fds exist, and no signal can interrupt the waits).
__attribute__((no_sanitize("address", "undefined"))) int HelperMain(void* arg) {
  const HelperArgs args = *static_cast<const HelperArgs*>(arg);
  // Keep the pipe's read end and the pidfd, close everything else.
  const auto a = static_cast<unsigned>(args.pipe_fd), b = static_cast<unsigned>(args.pidfd);
  const unsigned lo = a < b ? a : b, hi = a < b ? b : a;
  if (lo > 0) ::syscall(SYS_close_range, 0u, lo - 1, 0u);
  if (hi > lo + 1) ::syscall(SYS_close_range, lo + 1, hi - 1, 0u);
  ::syscall(SYS_close_range, hi + 1, ~0u, 0u);
  ::syscall(SYS_prctl, PR_SET_NAME, "spare-exit", 0ul, 0ul, 0ul);
  // Ends when the process is gone (the pidfd: after every one of its
  // threads has closed its files, so no file's last reference — a memfd of
  // a GiB — is dropped in the process's own exit path while it still has
  // sockets to close; also when a fork()ed child of the app holds the write
  // end), or a second after the pipe's end (an exec).
  pollfd p[2] = {{args.pidfd, POLLIN, 0}, {args.pipe_fd, POLLIN, 0}};
  for (;;) {
    if (::syscall(SYS_ppoll, p, 2ul, nullptr, nullptr, 0ul) <= 0) continue;
    if (p[0].revents) return 0;
    char byte;
    if (p[1].revents && ::syscall(SYS_read, args.pipe_fd, &byte, 1ul) <= 0) break;
  }
  timespec wait{kAfterPipeNs / 1'000'000'000, kAfterPipeNs % 1'000'000'000};
  ::syscall(SYS_ppoll, p, 1ul, &wait, nullptr, 0ul);
  return 0;  // glibc's clone() ends the helper with exit(2)
}

}  // namespace

Result<bool> ExitHelperFromEnv() {
  const char* v = std::getenv("SPARE_EXIT_HELPER");
  if (!v || !*v || std::string_view(v) == "1") return true;
  if (std::string_view(v) == "0") return false;
  return Status(Code::kInvalidArgument,
                "SPARE_EXIT_HELPER=\"" + std::string(v) + "\": expected 0 or 1");
}

Result<ExitHelper> ExitHelper::Start() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Status::FromErrno("pipe2 for the exit helper", errno);
  UniqueFd wait_end(p[0]);
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0u)));
  if (!pidfd.valid()) return Status::FromErrno("pidfd_open for the exit helper", errno);
  ExitHelper h;
  h.wake_.reset(p[1]);
  h.stack_ = ::mmap(nullptr, kStackSize, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
  if (h.stack_ == MAP_FAILED) {
    h.stack_ = nullptr;
    return Status::FromErrno("mmap of the exit helper's stack", errno);
  }
  // Every signal blocked from its first instruction: the helper inherits
  // this thread's mask, and the app's handlers must never run in it.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  auto* args = new (h.stack_) HelperArgs{wait_end.get(), pidfd.get()};
  pid_t pid = ::clone(HelperMain, static_cast<char*>(h.stack_) + kStackSize, CLONE_VM, args);
  const int err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return Status::FromErrno("clone(CLONE_VM) of the exit helper", err);
  h.pid_ = pid;
  return h;
}

ExitHelper::ExitHelper(ExitHelper&& o) noexcept
    : pid_(std::exchange(o.pid_, 0)),
      wake_(std::move(o.wake_)),
      stack_(std::exchange(o.stack_, nullptr)) {}

ExitHelper& ExitHelper::operator=(ExitHelper&& o) noexcept {
  if (this != &o) {
    Stop();
    pid_ = std::exchange(o.pid_, 0);
    wake_ = std::move(o.wake_);
    stack_ = std::exchange(o.stack_, nullptr);
  }
  return *this;
}

ExitHelper::~ExitHelper() { Stop(); }

void ExitHelper::Stop() {
  wake_.reset();
  bool gone = pid_ == 0;
  if (pid_ > 0) {
    // A fork()ed child may hold the write end too: do not wait for EOF. Our
    // unreaped child's pid cannot have been reused.
    ::kill(pid_, SIGKILL);
    int r;
    do {
      r = ::waitpid(pid_, nullptr, __WCLONE);
    } while (r < 0 && errno == EINTR);
    // ECHILD: someone else reaped it (a waitpid(-1, __WALL)); it is gone.
    gone = r == pid_ || errno == ECHILD;
    pid_ = 0;
  }
  // Its stack is unmapped only once it can no longer run on it.
  if (stack_ && gone) ::munmap(stack_, kStackSize);
  stack_ = nullptr;
}

}  // namespace spare
