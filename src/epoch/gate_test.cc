#include "spare/gate.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/fd.h"

namespace spare {
namespace {

struct Pair {
  UniqueFd app, client;
  Pair() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    app.reset(sv[0]);
    client.reset(sv[1]);
  }
  std::string Read() {
    char buf[65536];
    ssize_t n = ::read(client.get(), buf, sizeof(buf));
    return n > 0 ? std::string(buf, n) : std::string();
  }
};

TEST(Gate, HoldsUntilEpochDurable) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.send(p.app.get(), "+OK\r\n", 1).ok());
  ASSERT_TRUE(g.send(p.app.get(), ":2\r\n", 2).ok());
  EXPECT_EQ(p.Read(), "");  // nothing durable yet
  EXPECT_EQ(g.held_outputs(), 2u);
  ASSERT_TRUE(g.release(1).ok());
  EXPECT_EQ(p.Read(), "+OK\r\n");  // epoch 2's output still held
  ASSERT_TRUE(g.release(2).ok());
  EXPECT_EQ(p.Read(), ":2\r\n");
  EXPECT_EQ(g.held_bytes(), 0u);
  EXPECT_EQ(g.released_outputs(), 2u);
}

TEST(Gate, KeepsPerFdOrderAcrossEpochs) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.send(p.app.get(), "a", 3).ok());
  ASSERT_TRUE(g.send(p.app.get(), "b", 3).ok());
  ASSERT_TRUE(g.send(p.app.get(), "c", 4).ok());
  ASSERT_TRUE(g.release(4).ok());
  EXPECT_EQ(p.Read(), "abc");
}

TEST(Gate, AlreadyDurableGoesOutAtOnce) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.release(5).ok());
  ASSERT_TRUE(g.send(p.app.get(), "x", 5).ok());
  EXPECT_EQ(p.Read(), "x");
}

TEST(Gate, ForgetDropsHeldOutputs) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.send(p.app.get(), "secret", 9).ok());
  g.forget(p.app.get());
  EXPECT_EQ(g.held_bytes(), 0u);
  ASSERT_TRUE(g.release(9).ok());
  EXPECT_EQ(p.Read(), "");
}

TEST(Gate, WouldBlockKeepsTheRestForFlush) {
  Pair p;
  Gate g;
  std::string big(4 << 20, 'y');  // far more than a socket buffer
  ASSERT_TRUE(g.send(p.app.get(), big, 1).ok());
  ASSERT_TRUE(g.release(1).ok());
  EXPECT_TRUE(g.wants_write(p.app.get()));
  size_t got = 0;
  for (int i = 0; i < 100000 && got < big.size(); ++i) {
    got += p.Read().size();
    ASSERT_TRUE(g.flush(p.app.get()).ok());
  }
  EXPECT_EQ(got, big.size());
  EXPECT_FALSE(g.wants_write(p.app.get()));
}

TEST(Gate, PeerGoneIsReportedAndDropped) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.send(p.app.get(), "late", 1).ok());
  p.client.reset();
  Status st = g.release(1);
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_FALSE(g.wants_write(p.app.get()));
}

// An output already durable is written inside send(): when that write
// fails the caller hears it (and the count says so), not just a later read.
TEST(Gate, ImmediateWriteErrorIsReturned) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.release(1).ok());
  p.client.reset();
  Status st = g.send(p.app.get(), "x", 1);
  EXPECT_EQ(st.code(), Code::kIoError) << st.ToString();
  EXPECT_NE(st.message().find("fd " + std::to_string(p.app.get())), std::string::npos);
  EXPECT_EQ(g.write_errors(), 1u);
  EXPECT_FALSE(g.wants_write(p.app.get()));
  EXPECT_EQ(g.held_outputs(), 0u);
}

// send(2) fails with ENOTSOCK on pipes and files; the gate writes those
// with write(2), in order, immediate and released outputs alike.
TEST(Gate, WritesPipesAndFiles) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  UniqueFd r(fds[0]), w(fds[1]);
  Gate g;
  ASSERT_TRUE(g.send(w.get(), "held ", 2).ok());
  ASSERT_TRUE(g.release(2).ok());
  ASSERT_TRUE(g.send(w.get(), "now", 2).ok());
  char buf[64];
  ssize_t n = ::read(r.get(), buf, sizeof(buf));
  ASSERT_EQ(n, 8);
  EXPECT_EQ(std::string(buf, 8), "held now");
  EXPECT_EQ(g.write_errors(), 0u);

  char path[] = "/tmp/spare-gate-test-XXXXXX";
  UniqueFd file(::mkstemp(path));
  ASSERT_TRUE(file.valid());
  ::unlink(path);
  ASSERT_TRUE(g.send(file.get(), "to a file", 2).ok());
  EXPECT_EQ(::pread(file.get(), buf, sizeof(buf), 0), 9);
  EXPECT_EQ(std::string(buf, 9), "to a file");
}

// A pipe whose reader is gone is an error like a reset socket (SIGPIPE is
// the program's choice; ignored here so the test sees EPIPE).
TEST(Gate, ClosedPipeIsReported) {
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGPIPE, &ignore, &old), 0);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  UniqueFd w(fds[1]);
  ::close(fds[0]);
  Gate g;
  ASSERT_TRUE(g.send(w.get(), "lost", 1).ok());
  Status st = g.release(1);
  ::sigaction(SIGPIPE, &old, nullptr);
  EXPECT_EQ(st.code(), Code::kIoError) << st.ToString();
  EXPECT_NE(st.message().find("Broken pipe"), std::string::npos) << st.ToString();
  EXPECT_EQ(g.write_errors(), 1u);
}

}  // namespace
}  // namespace spare
