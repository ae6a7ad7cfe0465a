// cli/resp_client.h — a minimal blocking RESP (redis protocol) client, for
// `spare demo`'s load, PINGs and checks against spare-kv.
//
// One connection to HOST:PORT (127.0.0.1 by default) with TCP_NODELAY and a 5 s receive
// timeout (a reply held longer counts as lost). Commands go out as RESP
// arrays; replies: a status, integer or bulk string is one item, an array
// its items, a nil a nullopt item, "-ERR ..." a kFailedPrecondition.
// Hand-written (about 100 lines) rather than hiredis: libhiredis-dev is
// not among the packages this tree builds with, and the demo needs four
// commands.
//
// Threading: one thread per client; movable, not copyable.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "spare/status.h"

namespace spare::cli {

class RespClient {
 public:
  // Connects to 127.0.0.1:port. kIoError naming the address on failure.
  static Result<RespClient> Connect(int port);
  RespClient(RespClient&& o) noexcept;
  RespClient& operator=(RespClient&&) = delete;
  ~RespClient();

  // Sends one command and reads its reply (see the file comment).
  Result<std::vector<std::optional<std::string>>> Call(const std::vector<std::string>& args);
  // Pipelining: Send writes several commands at once; Read reads the next
  // reply (one per command, in order).
  Status Send(const std::vector<std::vector<std::string>>& commands);
  Result<std::vector<std::optional<std::string>>> Read();

 private:
  explicit RespClient(int fd) : fd_(fd) {}
  Result<std::optional<std::string>> Item(const std::string& head);
  Result<std::string> Line();
  Status Fill(size_t want);

  int fd_;
  std::string buf_;
};

}  // namespace spare::cli
