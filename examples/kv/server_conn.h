// server_conn.h — one client connection of the server (private to server*.cc).
#pragma once

#include <sys/epoll.h>

#include <cstring>
#include <memory>
#include <string>

#include "resp.h"
#include "server.h"

namespace kv {

struct Server::Conn {
  explicit Conn(int fd_, RespLimits limits) : fd(fd_), parser(limits) {}

  // Unparsed input is [start, end) of buf.
  std::string_view input() const { return {buf.get() + start, end - start}; }
  // Makes room for at least `want` more bytes; false if the buffer would
  // exceed `limit`.
  bool Reserve(size_t want, size_t limit) {
    if (cap - end >= want) return true;
    if (start > 0) {  // the parser keeps offsets relative to start: moving is fine
      std::memmove(buf.get(), buf.get() + start, end - start);
      end -= start;
      start = 0;
      if (cap - end >= want) return true;
    }
    size_t next = cap == 0 ? 16384 : cap * 2;
    while (next - end < want) next *= 2;
    if (next > limit) return false;
    std::unique_ptr<char[]> bigger(new char[next]);
    if (end > 0) std::memcpy(bigger.get(), buf.get(), end);
    buf = std::move(bigger);
    cap = next;
    return true;
  }

  int fd;
  std::unique_ptr<char[]> buf;
  size_t cap = 0, start = 0, end = 0;
  RequestParser parser;
  Session session;            // AUTH state
  std::string out;            // replies of the current batch
  uint64_t last_epoch = 0;    // epoch the newest reply depends on
  bool closing = false;       // QUIT or fatal protocol error: close once replies are out
  bool read_closed = false;   // peer sent EOF: close once input is done and replies are out
  bool dead = false;          // closed; the object lives until the iteration ends
  bool want_write = false;    // gate has bytes the socket did not take
  uint32_t events = EPOLLIN;  // registered epoll events
  bool in_runnable = false, in_touched = false, in_watch = false;
};

}  // namespace kv
