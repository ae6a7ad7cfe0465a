// ExitHelper: shares the address space and nothing else, and ends when the
// instance is gone (also while a fork()ed child holds its pipe), or a
// second after it exec()s — so it never outlives what it serves; and it
// outlives the pipe's end until the process is gone. (How much it
// saves is measured in bench/restart_bench.py, not here.)
#include "runtime/exit_helper.h"

#include <gtest/gtest.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace spare {
namespace {

std::string ProcField(pid_t pid, const std::string& file) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/" + file);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

uint64_t SigBlk(pid_t pid) {
  std::string status = ProcField(pid, "status");
  size_t at = status.find("SigBlk:");
  if (at == std::string::npos) return 0;
  return std::strtoull(status.c_str() + at + 7, nullptr, 16);
}

// Polls a pidfd for up to ms: true once the process has ended.
bool EndsWithin(int pidfd, int ms) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// The test process adopts orphans (as the agent does) so that it can reap
// the helpers and children these tests leave behind.
class ExitHelperTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }
  void TearDown() override {
    while (::waitpid(-1, nullptr, __WALL | WNOHANG) > 0) {
    }
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
  }

  // Forks a child that starts a helper, runs `then` and pauses; returns the
  // child's and the helper's pids.
  template <typename F>
  std::pair<pid_t, pid_t> ForkInstance(F then) {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    pid_t child = ::fork();
    if (child == 0) {
      ::close(p[0]);
      auto h = ExitHelper::Start();
      if (!h.ok()) ::_exit(3);
      pid_t hp = h->pid();
      if (::write(p[1], &hp, sizeof(hp)) != sizeof(hp)) ::_exit(4);
      then(p[1]);
      for (;;) ::pause();
    }
    ::close(p[1]);
    pid_t helper = 0;
    EXPECT_EQ(::read(p[0], &helper, sizeof(helper)), static_cast<ssize_t>(sizeof(helper)));
    ::close(p[0]);
    return {child, helper};
  }
};

TEST_F(ExitHelperTest, SharesTheAddressSpaceAndNothingElse) {
  auto h = ExitHelper::Start();
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const pid_t pid = h->pid();
  ASSERT_GT(pid, 0);
  EXPECT_EQ(::syscall(SYS_kcmp, ::getpid(), pid, KCMP_VM, 0, 0), 0) << "not the same mm";
  EXPECT_NE(::syscall(SYS_kcmp, ::getpid(), pid, KCMP_FILES, 0, 0), 0) << "shares our fd table";
  // Give it a moment to close what it inherited (bounded).
  size_t fds = 0;
  for (int i = 0; i < 200; ++i) {
    fds = 0;
    for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
      fds += e.path().filename() != "." ? 1 : 0;
    if (fds == 2 && ProcField(pid, "comm") == "spare-exit") break;
    ::usleep(5000);
  }
  EXPECT_EQ(fds, 2u) << "the helper keeps only its pipe and its pidfd open";
  EXPECT_EQ(ProcField(pid, "comm"), "spare-exit");
  const uint64_t blocked = SigBlk(pid);
  for (int sig : {SIGINT, SIGTERM, SIGSEGV, SIGCHLD, SIGUSR1, SIGHUP})
    EXPECT_TRUE(blocked & (1ull << (sig - 1))) << "signal " << sig << " not blocked";
  int wstatus = 0;
  EXPECT_EQ(::waitpid(pid, &wstatus, __WCLONE | WNOHANG), 0) << "it is alive, and our clone child";

  *h = ExitHelper();  // kills and reaps it
  errno = 0;
  EXPECT_EQ(::waitpid(pid, nullptr, __WALL | WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD) << "the helper was not reaped";
}

TEST_F(ExitHelperTest, EndsWhenTheInstanceIsKilled) {
  auto [child, helper] = ForkInstance([](int) {
    // Some written memory, as an instance would hold.
    const size_t n = 64 << 20;
    char* m = static_cast<char*>(
        ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m != MAP_FAILED) std::memset(m, 1, n);
  });
  ASSERT_GT(helper, 0);
  int hfd = PidfdOpen(helper);
  ASSERT_GE(hfd, 0);
  ::usleep(100'000);  // let it fill
  ASSERT_FALSE(EndsWithin(hfd, 0)) << "the helper ended while its instance lives";
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  EXPECT_TRUE(WIFSIGNALED(wstatus));
  EXPECT_TRUE(EndsWithin(hfd, 10'000)) << "the helper outlived its instance";
  // Orphaned, it came to us (the subreaper) and is reaped like any child.
  EXPECT_EQ(::waitpid(helper, nullptr, __WALL), helper);
  ::close(hfd);
}

TEST_F(ExitHelperTest, EndsWhenTheInstanceExecs) {
  auto [child, helper] = ForkInstance([](int) {
    ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    ::_exit(5);
  });
  ASSERT_GT(helper, 0);
  int hfd = PidfdOpen(helper);
  ASSERT_GE(hfd, 0);
  EXPECT_TRUE(EndsWithin(hfd, 10'000)) << "the helper kept the pre-exec address space alive";
  EXPECT_EQ(ProcField(child, "comm"), "sleep") << "the instance itself is still running";
  ::kill(child, SIGKILL);
  EXPECT_EQ(::waitpid(child, nullptr, 0), child);
  // The helper was the exec'd process's zombie child; now it is ours.
  for (int i = 0; i < 200 && ::waitpid(helper, nullptr, __WALL | WNOHANG) == 0; ++i)
    ::usleep(5000);
  ::close(hfd);
}

// After the pipe's end the helper waits (up to a second) for the whole
// process to be gone, so that the address space (and the files its
// mappings hold) goes after every file the process itself closes: here an
// exec of a process that ends half a second later.
TEST_F(ExitHelperTest, ItOutlivesThePipeUntilTheProcessIsGone) {
  auto [child, helper] = ForkInstance(
      [](int) {
        ::execl("/bin/sleep", "sleep", "0.5", static_cast<char*>(nullptr));
        ::_exit(5);
      });
  ASSERT_GT(helper, 0);
  int hfd = PidfdOpen(helper);
  ASSERT_GE(hfd, 0);
  ASSERT_FALSE(EndsWithin(hfd, 200)) << "it ended at the pipe's end, with its process alive";
  EXPECT_EQ(ProcField(child, "comm"), "sleep");
  EXPECT_EQ(ProcField(helper, "comm"), "spare-exit");
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);  // sleep ends by itself
  EXPECT_TRUE(WIFEXITED(wstatus));
  EXPECT_TRUE(EndsWithin(hfd, 10'000)) << "it outlived its process";
  for (int i = 0; i < 200 && ::waitpid(helper, nullptr, __WALL | WNOHANG) == 0; ++i)
    ::usleep(5000);
  ::close(hfd);
}

TEST_F(ExitHelperTest, EndsWithTheInstanceWhileAForkedChildHoldsThePipe) {
  auto [child, helper] = ForkInstance([](int) {
    if (::fork() == 0) {  // inherits the helper's write end and never execs
      for (;;) ::pause();
    }
  });
  ASSERT_GT(helper, 0);
  int hfd = PidfdOpen(helper);
  ASSERT_GE(hfd, 0);
  ASSERT_FALSE(EndsWithin(hfd, 100)) << "the helper ended while its instance lives";
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  EXPECT_TRUE(EndsWithin(hfd, 10'000)) << "the instance's end did not end the helper";
  // Both the helper and the grandchild are ours now.
  for (auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t p = std::stoi(name);
    std::string stat = ProcField(p, "stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == ::getpid())
      ::kill(p, SIGKILL);
  }
  for (int i = 0; i < 400; ++i) {  // bounded: 2 s
    pid_t r = ::waitpid(-1, nullptr, __WALL | WNOHANG);
    if (r < 0) break;  // ECHILD: all reaped
    if (r == 0) ::usleep(5000);
  }
  ::close(hfd);
}

TEST(ExitHelperEnv, NamesABadValue) {
  ::setenv("SPARE_EXIT_HELPER", "yes", 1);
  auto bad = ExitHelperFromEnv();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("SPARE_EXIT_HELPER=\"yes\""), std::string::npos);
  ::setenv("SPARE_EXIT_HELPER", "0", 1);
  EXPECT_FALSE(ExitHelperFromEnv().value());
  ::unsetenv("SPARE_EXIT_HELPER");
  EXPECT_TRUE(ExitHelperFromEnv().value());
}

}  // namespace
}  // namespace spare
