#include "spare/gate.h"

#include <gtest/gtest.h>
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
  g.send(p.app.get(), "+OK\r\n", 1);
  g.send(p.app.get(), ":2\r\n", 2);
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
  g.send(p.app.get(), "a", 3);
  g.send(p.app.get(), "b", 3);
  g.send(p.app.get(), "c", 4);
  ASSERT_TRUE(g.release(4).ok());
  EXPECT_EQ(p.Read(), "abc");
}

TEST(Gate, AlreadyDurableGoesOutAtOnce) {
  Pair p;
  Gate g;
  ASSERT_TRUE(g.release(5).ok());
  g.send(p.app.get(), "x", 5);
  EXPECT_EQ(p.Read(), "x");
}

TEST(Gate, ForgetDropsHeldOutputs) {
  Pair p;
  Gate g;
  g.send(p.app.get(), "secret", 9);
  g.forget(p.app.get());
  EXPECT_EQ(g.held_bytes(), 0u);
  ASSERT_TRUE(g.release(9).ok());
  EXPECT_EQ(p.Read(), "");
}

TEST(Gate, WouldBlockKeepsTheRestForFlush) {
  Pair p;
  Gate g;
  std::string big(4 << 20, 'y');  // far more than a socket buffer
  g.send(p.app.get(), big, 1);
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
  g.send(p.app.get(), "late", 1);
  p.client.reset();
  Status st = g.release(1);
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_FALSE(g.wants_write(p.app.get()));
}

}  // namespace
}  // namespace spare
