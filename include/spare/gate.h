// spare/gate.h — the output gate.
//
// Every externally visible output is queued with the epoch it depends on
// and written to its fd only once that epoch is durable. Outputs of one fd
// leave in the order they were queued. A write that would block keeps the
// rest queued: check wants_write(fd) and call flush(fd) when fd is writable.
//
// fd may be a socket (written with send(MSG_NOSIGNAL), so a closed peer is
// an error, not a SIGPIPE) or anything write(2) takes: a pipe, a file, a
// tty (found by ENOTSOCK; a closed pipe then raises SIGPIPE unless the
// program ignores it). A write that fails drops that fd's outputs and is
// returned to the caller; write_errors() counts them.
//
// Threading: owned by a Runtime; same thread as the Runtime.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>

#include "spare/status.h"

namespace spare {

class Gate {
 public:
  // Queues `bytes` for `fd`, to be released once `epoch` is durable (at
  // once when it already is and nothing older is held for fd). An error
  // when that immediate write fails (the peer is gone: fd's outputs are
  // dropped); Ok when queued or written (or partly: see wants_write).
  Status send(int fd, std::string_view bytes, uint64_t epoch);
  // Queues `bytes` for `fd` under the runtime's pending epoch.
  Status send(int fd, std::string_view bytes) { return send(fd, bytes, pending_epoch_); }

  // Marks every epoch <= epoch durable and writes what that releases.
  // Returns the first write error other than EAGAIN (that fd's outputs are
  // dropped: its peer is gone).
  Status release(uint64_t epoch);
  // Writes released-but-unwritten bytes of fd. Ok if fd would block again.
  Status flush(int fd);
  // True when fd has released bytes that could not be written yet.
  bool wants_write(int fd) const;
  // Drops everything queued for fd (the connection closed).
  void forget(int fd);

  uint64_t durable_epoch() const { return durable_; }
  size_t held_bytes() const { return held_bytes_; }
  size_t held_outputs() const { return held_outputs_; }
  uint64_t released_outputs() const { return released_outputs_; }
  // Writes that failed (each dropped its fd's outputs), from any call.
  uint64_t write_errors() const { return write_errors_; }

  // Set by the Runtime: the epoch outputs produced now depend on.
  void set_pending_epoch(uint64_t epoch) { pending_epoch_ = epoch; }

 private:
  struct Output {
    uint64_t epoch;
    std::string bytes;
  };
  struct Queue {
    std::deque<Output> held;  // not yet durable, in send order
    std::string ready;        // durable, not yet written
    bool not_socket = false;  // send() said ENOTSOCK: write() from now on
  };
  Status WriteReady(int fd, Queue& q);

  std::unordered_map<int, Queue> queues_;
  uint64_t durable_ = 0;
  uint64_t pending_epoch_ = 1;
  size_t held_bytes_ = 0;
  size_t held_outputs_ = 0;
  uint64_t released_outputs_ = 0;
  uint64_t write_errors_ = 0;
};

}  // namespace spare
