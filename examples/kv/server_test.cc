// End-to-end tests of the event loop: a forked unprotected server, raw
// sockets. (The protected path runs under a real agent in tests/.)
#include "server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

namespace kv {
namespace {

class ServerTest : public ::testing::Test {
 protected:
  void Start(size_t max_batch = 1024) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      close(p[0]);
      ServerOptions options;
      options.port = 0;
      options.region_size = 64 << 20;
      options.max_batch = max_batch;
      // Every commit checks that the store declared each byte it wrote;
      // an undeclared one fails Run() (exit 6).
      setenv("SPARE_VERIFY_WRITES", "1", 1);
      auto rt = spare::Runtime::Unprotected();
      if (!rt.ok()) _exit(3);
      auto server = Server::Create(std::move(rt).value(), options);
      if (!server.ok()) _exit(4);
      int port = (*server)->port();
      if (write(p[1], &port, sizeof port) != sizeof port) _exit(5);
      close(p[1]);
      _exit((*server)->Run().ok() ? 0 : 6);
    }
    close(p[1]);
    ASSERT_EQ(read(p[0], &port_, sizeof port_), static_cast<ssize_t>(sizeof port_));
    close(p[0]);
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    }
  }
  int Connect() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
  }
  static void SendAll(int fd, std::string_view s) {
    while (!s.empty()) {
      ssize_t n = send(fd, s.data(), s.size(), MSG_NOSIGNAL);
      ASSERT_GT(n, 0);
      s.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Reads until `want` bytes arrived or the peer closed (*eof).
  static std::string Recv(int fd, size_t want, bool* eof = nullptr) {
    std::string got;
    char buf[65536];
    while (got.size() < want) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) {
        if (eof) *eof = n == 0;
        return got;
      }
      got.append(buf, static_cast<size_t>(n));
    }
    if (eof) *eof = false;
    return got;
  }
  std::string RoundTrip(std::string_view request, size_t reply_bytes) {
    int fd = Connect();
    SendAll(fd, request);
    std::string r = Recv(fd, reply_bytes);
    close(fd);
    return r;
  }

  pid_t pid_ = -1;
  int port_ = 0;
};

TEST_F(ServerTest, PipelinedRequestsAnsweredInOrder) {
  Start(/*max_batch=*/7);  // several epochs per read
  std::string req, want;
  for (int i = 0; i < 500; ++i) {
    std::string k = "k" + std::to_string(i);
    req += "*3\r\n$3\r\nSET\r\n$" + std::to_string(k.size()) + "\r\n" + k + "\r\n$1\r\nv\r\n";
    req += "GET " + k + "\r\n";
    want += "+OK\r\n$1\r\nv\r\n";
  }
  EXPECT_EQ(RoundTrip(req, want.size()), want);
  EXPECT_EQ(RoundTrip("DBSIZE\r\n", 6), ":500\r\n");
}

TEST_F(ServerTest, QuitAndHalfCloseDeliverRepliesThenClose) {
  Start();
  int fd = Connect();
  SendAll(fd, "PING\r\nQUIT\r\nPING\r\n");
  bool eof = false;
  EXPECT_EQ(Recv(fd, 1 << 20, &eof), "+PONG\r\n+OK\r\n");
  EXPECT_TRUE(eof);
  close(fd);

  fd = Connect();
  SendAll(fd, "SET a 1\r\nGET a\r\n");
  shutdown(fd, SHUT_WR);
  EXPECT_EQ(Recv(fd, 1 << 20, &eof), "+OK\r\n$1\r\n1\r\n");
  EXPECT_TRUE(eof);
  close(fd);
}

TEST_F(ServerTest, ProtocolErrors) {
  Start();
  // Inline: the bad line is answered and skipped, the connection goes on.
  std::string want = "-ERR Protocol error: unbalanced quotes in request\r\n+PONG\r\n";
  EXPECT_EQ(RoundTrip("SET a \"x\r\nPING\r\n", want.size()), want);
  // Multibulk: what came before runs, the error is answered, the rest is
  // never executed and the connection closes.
  int fd = Connect();
  SendAll(fd, "SET a 1\r\n*2\r\n$3\r\nSET\r\n$x\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n2\r\n");
  bool eof = false;
  EXPECT_EQ(Recv(fd, 1 << 20, &eof), "+OK\r\n-ERR Protocol error: invalid bulk length\r\n");
  EXPECT_TRUE(eof);
  close(fd);
  EXPECT_EQ(RoundTrip("GET a\r\n", 7), "$1\r\n1\r\n");
}

TEST_F(ServerTest, LargeValues) {
  Start();
  std::string value(5 << 20, 'x');
  for (size_t i = 0; i < value.size(); i += 4093) value[i] = static_cast<char>('a' + i % 26);
  std::string req = "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$" + std::to_string(value.size()) + "\r\n" +
                    value + "\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
  std::string want = "+OK\r\n$" + std::to_string(value.size()) + "\r\n" + value + "\r\n";
  EXPECT_EQ(RoundTrip(req, want.size()), want);
}

}  // namespace
}  // namespace kv
