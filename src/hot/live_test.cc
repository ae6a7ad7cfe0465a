// The liveness channel over real TCP on loopback: beats both ways, a close
// without Leaving is a death (at once), a Leaving then close is not, a
// stalled loop stops its side's beats, and bad bytes close a connection
// without being taken for a death.
#include "hot/live.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "hot/wire.h"

namespace spare::hot {
namespace {

using namespace std::chrono_literals;

template <typename F>
bool Eventually(F f, std::chrono::milliseconds within = 2000ms) {
  const auto end = LiveClock::now() + within;
  while (LiveClock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return f();
}

std::unique_ptr<LiveServer> Server(const LoopPulse* pulse = nullptr) {
  LiveServer::Options o;
  o.heartbeat_ms = 10;
  o.stall = 200ms;
  auto s = LiveServer::Create(o, pulse);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(*s);
}

std::unique_ptr<LiveClient> Client(LiveServer& s, const std::string& name,
                                   const LoopPulse* pulse = nullptr) {
  auto c = LiveClient::Create(name, 200ms, pulse);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  (*c)->Target("127.0.0.1", s.port(), 10);
  return std::move(*c);
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

// A raw TCP connection to the server, for bytes no client would send.
int RawConnect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

void RawSend(int fd, const std::vector<std::byte>& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
}

std::vector<std::byte> Frame(Type t, const std::vector<std::byte>& body) {
  return Encode(Header{t, 0, 0, 0, 0}, body);
}

TEST(LiveTest, BeatsBothWays) {
  auto s = Server();
  auto c = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a") && s->Get("agent:a")->beats >= 5; }));
  EXPECT_TRUE(s->Get("agent:a")->connected);
  EXPECT_TRUE(c->connected());
  ASSERT_TRUE(Eventually([&] { return LiveClock::now() - c->last_heard() < 50ms; }));
  EXPECT_FALSE(s->Get("agent:a")->died);
  EXPECT_FALSE(Readable(s->event_fd()));
}

TEST(LiveTest, ACloseWithoutLeavingIsADeathAtOnce) {
  auto s = Server();
  auto c = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a") && s->Get("agent:a")->connected; }));
  const auto closed = LiveClock::now();
  c.reset();  // the socket closes, as it does when the process dies
  ASSERT_TRUE(Eventually([&] { return Readable(s->event_fd()); }, 500ms));
  s->ClearEvent();
  EXPECT_FALSE(Readable(s->event_fd()));
  auto a = s->Get("agent:a");
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->died);
  EXPECT_FALSE(a->connected);
  EXPECT_LT(a->died_at - closed, 100ms);
  // The agent is back (its UCX Hello): the death is over.
  s->Revive("agent:a");
  EXPECT_FALSE(s->Get("agent:a")->died);
}

TEST(LiveTest, LeavingThenCloseIsNotADeath) {
  auto s = Server();
  auto c = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a") && s->Get("agent:a")->connected; }));
  EXPECT_TRUE(c->Leave(5000, 1000ms));
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a")->leaving_until > LiveClock::now(); }));
  c.reset();
  ASSERT_TRUE(Eventually([&] { return !s->Get("agent:a")->connected; }));
  EXPECT_FALSE(s->Get("agent:a")->died);
  EXPECT_FALSE(Readable(s->event_fd()));
}

TEST(LiveTest, ANewConnectionOfTheSameAgentReplacesTheOldOneQuietly) {
  auto s = Server();
  auto c1 = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a") && s->Get("agent:a")->connected; }));
  auto c2 = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return !c1->connected() || c1->last_heard() < LiveClock::now() - 100ms; }));
  c1.reset();
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(s->Get("agent:a")->died);
  EXPECT_FALSE(Readable(s->event_fd()));
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a")->connected; }));
  c2.reset();
  ASSERT_TRUE(Eventually([&] { return Readable(s->event_fd()); }, 500ms));
  EXPECT_TRUE(s->Get("agent:a")->died);
}

TEST(LiveTest, AStalledLoopStopsItsSidesBeats) {
  LoopPulse agent_loop, standby_loop;  // never ticked after this: stale after 200 ms
  auto s = Server(&standby_loop);
  auto c = Client(*s, "agent:a", &agent_loop);
  // While fresh (they start ticked), both sides beat.
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a") && s->Get("agent:a")->beats >= 3; }));
  ASSERT_TRUE(Eventually([&] { return LiveClock::now() - c->last_heard() < 50ms; }));
  std::this_thread::sleep_for(400ms);  // both loops are now 400 ms late (stall 200 ms)
  const uint64_t beats = s->Get("agent:a")->beats;
  const auto heard = c->last_heard();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(s->Get("agent:a")->beats, beats) << "a stalled agent loop is hidden by its thread";
  EXPECT_EQ(c->last_heard(), heard) << "a stalled standby loop is hidden by its thread";
  agent_loop.Tick();
  standby_loop.Tick();
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:a")->beats > beats; }, 150ms));
  ASSERT_TRUE(Eventually([&] { return c->last_heard() > heard; }, 150ms));
  EXPECT_TRUE(s->Get("agent:a")->connected);  // a stall is silence, never a close
}

TEST(LiveTest, BadBytesCloseTheConnectionAndAreNotADeath) {
  auto s = Server();
  // A first frame that is not Hello.
  int fd = RawConnect(s->port());
  RawSend(fd, Frame(Type::kHeartbeat, Body(Heartbeat{1, 0})));
  char b;
  EXPECT_EQ(::recv(fd, &b, 1, 0), 0) << "closed";
  ::close(fd);
  // Hello, then a frame with a flipped checksum byte.
  fd = RawConnect(s->port());
  RawSend(fd, Frame(Type::kHello, Body(Hello{"agent:x"})));
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:x") && s->Get("agent:x")->connected; }));
  auto bad = Frame(Type::kHeartbeat, Body(Heartbeat{1, 0}));
  bad[40] ^= std::byte{1};
  RawSend(fd, bad);
  ASSERT_TRUE(Eventually([&] { return !s->Get("agent:x")->connected; }));
  EXPECT_FALSE(s->Get("agent:x")->died) << "a bad frame is judged by the timeout, not a death";
  EXPECT_EQ(s->Get("agent:x")->beats, 0u);
  ::close(fd);
  // A header that promises more than any frame may hold.
  fd = RawConnect(s->port());
  RawSend(fd, Frame(Type::kHello, Body(Hello{"agent:y"})));
  auto big = Frame(Type::kHeartbeat, Body(Heartbeat{1, 0}));
  big[8] = std::byte{0xff};
  big[9] = std::byte{0xff};
  big[10] = std::byte{0xff};
  RawSend(fd, big);
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:y") && !s->Get("agent:y")->connected; }));
  EXPECT_FALSE(s->Get("agent:y")->died);
  ::close(fd);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(Readable(s->event_fd()));
  // Some other message on the channel.
  fd = RawConnect(s->port());
  RawSend(fd, Frame(Type::kHello, Body(Hello{"agent:z"})));
  RawSend(fd, Frame(Type::kRetire, {}));
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:z") && !s->Get("agent:z")->connected; }));
  EXPECT_FALSE(s->Get("agent:z")->died);
  ::close(fd);
  // Silence before Hello: closed after a second.
  fd = RawConnect(s->port());
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 3000), 1);
  EXPECT_EQ(::recv(fd, &b, 1, 0), 0);
  ::close(fd);
  // And a good client still works beside all that.
  auto c = Client(*s, "agent:good");
  ASSERT_TRUE(Eventually([&] { return s->Get("agent:good") && s->Get("agent:good")->beats >= 3; }));
}

TEST(LiveTest, AClientReconnectsWhenTheServerComesBack) {
  auto s = Server();
  auto c = Client(*s, "agent:a");
  ASSERT_TRUE(Eventually([&] { return c->connected(); }));
  s.reset();  // the standby is gone
  ASSERT_TRUE(Eventually([&] { return !c->connected(); }));
  auto s2 = Server();
  c->Target("127.0.0.1", s2->port(), 10);  // the new standby's Welcome
  ASSERT_TRUE(Eventually([&] { return s2->Get("agent:a") && s2->Get("agent:a")->beats >= 3; }));
}

}  // namespace
}  // namespace spare::hot
