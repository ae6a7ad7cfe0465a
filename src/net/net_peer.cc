// net_peer HOST PORT MODE — a peer process for transport_test: connects to
// HOST:PORT with error mode MODE ("none" or "peer"), sends active message 1
// "hi <pid>", then keeps progressing until it is killed (or 60 s pass).
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "net/transport.h"

int main(int argc, char** argv) {
  using namespace spare::net;
  if (argc != 4) {
    std::fprintf(stderr, "usage: net_peer HOST PORT none|peer\n");
    return 2;
  }
  auto w = Worker::Create();
  if (!w.ok()) {
    std::fprintf(stderr, "net_peer: %s\n", w.status().ToString().c_str());
    return 1;
  }
  const ErrorMode mode = std::string(argv[3]) == "peer" ? ErrorMode::kPeer : ErrorMode::kNone;
  auto ep = (*w)->Connect(argv[1], static_cast<uint16_t>(std::atoi(argv[2])), mode);
  if (!ep.ok()) {
    std::fprintf(stderr, "net_peer: %s\n", ep.status().ToString().c_str());
    return 1;
  }
  std::string hi = "hi " + std::to_string(::getpid());
  auto st = (*ep)->SendAm(1, std::as_bytes(std::span(hi.data(), hi.size())));
  if (!st.ok()) {
    std::fprintf(stderr, "net_peer: %s\n", st.ToString().c_str());
    return 1;
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < end) {
    (*w)->Progress();
    pollfd p{(*w)->event_fd(), POLLIN, 0};
    ::poll(&p, 1, 10);
  }
  return 0;
}
