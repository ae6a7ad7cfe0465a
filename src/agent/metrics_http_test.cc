// The metrics listener binds loopback unless told otherwise: an agent
// started with only a port must not serve its instances' names and
// counters to the whole network.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "agent/agent.h"
#include "agent/options.h"
#include "agent/test_dir.h"

namespace spare::agent {
namespace {

// A TCP port free on loopback right now.
uint16_t FreePort() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  EXPECT_EQ(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  return ntohs(a.sin_port);
}

// The local address (hex, as /proc/net/tcp prints it) of the socket
// listening on `port`; empty when there is none.
std::string ListenAddressOf(uint16_t port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // header
  char want[8];
  std::snprintf(want, sizeof(want), "%04X", port);
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string slot, local, remote, state;
    f >> slot >> local >> remote >> state;
    if (state == "0A" && local.size() > 5 && local.substr(local.size() - 4) == want)
      return local.substr(0, local.size() - 5);
  }
  return {};
}

class MetricsHttpTest : public AgentDirTest {
 protected:
  // GET /metrics over 127.0.0.1, pumping the agent; the whole response.
  std::string Get(uint16_t port) {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));  // EINPROGRESS
    std::string req = "GET /metrics HTTP/1.0\r\n\r\n", out;
    bool sent = false;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < end) {
      EXPECT_TRUE(agent_->PollOnce(5).ok());
      if (!sent) sent = ::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) > 0;
      char buf[4096];
      ssize_t n = ::recv(s.get(), buf, sizeof(buf), 0);
      if (n == 0) break;
      if (n > 0) out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
};

TEST_F(MetricsHttpTest, DefaultsToLoopback) {
  EXPECT_EQ(AgentOptions{}.metrics_host, "127.0.0.1");
  AgentOptions o;
  o.metrics_port = FreePort();
  ASSERT_TRUE(Start(o).ok());
  EXPECT_EQ(ListenAddressOf(o.metrics_port), "0100007F") << "bound to 127.0.0.1 only";
  std::string reply = Get(o.metrics_port);
  EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK", 0), 0u) << reply;
  EXPECT_NE(reply.find("# TYPE spare_instance_up gauge"), std::string::npos) << reply;
}

TEST_F(MetricsHttpTest, BindsTheAddressAskedFor) {
  AgentOptions o;
  o.metrics_port = FreePort();
  o.metrics_host = "0.0.0.0";
  ASSERT_TRUE(Start(o).ok());
  EXPECT_EQ(ListenAddressOf(o.metrics_port), "00000000");
}

TEST(MetricsAddress, Parses) {
  auto hp = ParseHostPort("127.0.0.1:9464");
  ASSERT_TRUE(hp.ok()) << hp.status().ToString();
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 9464);
  EXPECT_EQ(ParseHostPort("localhost:1")->host, "127.0.0.1");
  for (const char* bad : {"9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "host:80",
                          "1.2.3:80", ":80", "127.0.0.1:80x"}) {
    auto r = ParseHostPort(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  }
}

}  // namespace
}  // namespace spare::agent
