// net/transport.h — spare's one door to UCX (the only code that includes
// UCX headers; tests/test_lib_boundaries.py checks it). Agents and standbys
// talk through these types; nothing here knows what an epoch is, so cold
// protection and the remote-memory service can use the same transport.
//
//   Worker     a UCP context + worker (single-threaded), driven from the
//              owner's epoll loop: poll event_fd(), then Progress().
//   Listener   Worker::Listen: a sockaddr listener; each accepted peer
//              becomes an Endpoint handed to the owner.
//   Endpoint   Worker::Connect or accepted: active messages (control),
//              puts into the peer's registered memory (data), flush (a put
//              is known to have landed only once a later flush completed).
//   Memory     Worker::Map: memory registered for remote access, and the
//              packed key a peer needs to write it.
//   RemoteKey  Endpoint::UnpackKey: a peer's key, valid on that endpoint.
//
// Callbacks — AM handlers, Done callbacks, accept and error callbacks —
// run only from inside Worker::Progress(), after UCX's own progress has
// returned, never from inside the call that started the operation: an
// owner never sees re-entrance from a send, and a callback may start new
// operations or destroy endpoints (not the Worker).
//
// Closing (UCX 1.13, found by transport_test): an endpoint must not be
// closed half-wired — before each side has sent a message and received
// one (or before it failed). Closing one earlier, or having sent it an
// active message whose id the receiver never registered, trips an
// assertion inside UCX's progress (`(*ep_p)->worker == worker`) over the
// shared-memory transports. spare's protocols therefore start with a
// message each way and register every id both sides use before connecting.
// A failed endpoint is closed with UCP_EP_CLOSE_FLAG_FORCE, a working one
// gracefully (which needs the peer to progress: Worker::closing()).
//
// Error handling: UCP_ERR_HANDLING_MODE_PEER makes UCX detect a dead peer
// on an endpoint (and report it through on_error), at the price of
// dropping shared-memory transports (docs/ARCHITECTURE.md, "Transport").
// It is chosen per endpoint; spare's own heartbeats detect failures either
// way (UCX's keepalive is far too slow for failover).
//
// Thread-safety: a Worker and everything made from it are used from one
// thread.
#pragma once

#include <cstddef>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <sys/socket.h>

#include <unordered_map>
#include <vector>

#include "common/fd.h"
#include "spare/status.h"

namespace spare::net {

// UCP error handling of an endpoint. Both ends of a connection must use the
// same one. kAuto picks per connection: kNone when the peer is on this host
// and UCX_TLS allows shared memory (PEER would drop the shared-memory lanes),
// kPeer otherwise: over TCP, UCX 1.13 emulates puts with messages whose
// completion, in NONE mode, aborts the process when the peer died mid-put
// (ucp_put_handler "unexpected error": seen killing a standby when an agent
// was killed during a full copy).
enum class ErrorMode { kNone, kPeer, kAuto };
// What kAuto picks for a peer at `addr` (the sockaddr of the other end).
ErrorMode AutoErrorMode(const sockaddr* addr);

struct Address {
  std::string host;
  uint16_t port = 0;
};
// "HOST:PORT" (the last ':' splits; port 0-65535, 0 only if allow_any_port);
// kInvalidArgument names `flag` and what is wrong.
Result<Address> ParseAddress(std::string_view text, std::string_view flag, bool allow_any_port);
const char* ErrorModeName(ErrorMode m);

class Endpoint;
class Worker;

using Done = std::function<void(const Status&)>;
// Called with the endpoint a message came on (null once that endpoint is
// gone) and its bytes, which are valid only during the call. `from` is null when the sender gave no reply
// endpoint (every message sent through Endpoint::SendAm carries one).
using AmHandler = std::function<void(Endpoint* from, std::span<const std::byte> bytes)>;

// Memory registered with UCX for remote puts and gets.
class Memory {
 public:
  ~Memory();
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;

  std::byte* base() const { return base_; }
  size_t size() const { return size_; }
  // The key a peer unpacks (Endpoint::UnpackKey) to access this memory.
  const std::string& packed_key() const { return packed_; }

 private:
  friend class Worker;
  Memory() = default;
  Worker* worker_ = nullptr;
  void* memh_ = nullptr;  // ucp_mem_h
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  std::string packed_;
};

// A peer's memory key, unpacked on one endpoint. Destroy it before the
// endpoint.
class RemoteKey {
 public:
  ~RemoteKey();
  RemoteKey(const RemoteKey&) = delete;
  RemoteKey& operator=(const RemoteKey&) = delete;

 private:
  friend class Endpoint;
  RemoteKey() = default;
  void* rkey_ = nullptr;  // ucp_rkey_h
};

class Endpoint {
 public:
  // Closes the endpoint (flushing what is queued unless it failed).
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Sends an active message with handler id `id`; `bytes` is copied. done
  // (optional) runs once UCX no longer needs it or the send failed.
  Status SendAm(uint16_t id, std::span<const std::byte> bytes, Done done = {});
  // The same, taking the buffer instead of copying it.
  Status SendAm(uint16_t id, std::vector<std::byte>&& bytes, Done done = {});
  // Writes `len` bytes at `local` to address `remote` of the peer's memory
  // that `key` unpacked. `local` must stay valid and unchanged until done.
  Status Put(const void* local, size_t len, uint64_t remote, const RemoteKey& key, Done done = {});
  // done runs once every put and send started before it has completed at
  // the peer.
  Status Flush(Done done);
  Result<std::unique_ptr<RemoteKey>> UnpackKey(std::span<const std::byte> packed);

  // The first error seen on this endpoint (a dead peer, a failed
  // operation); Ok while it works.
  const Status& error() const { return error_; }
  bool failed() const { return !error_.ok(); }
  // Runs (from Progress) once, when the endpoint first fails.
  void set_on_error(std::function<void(const Status&)> f) { on_error_ = std::move(f); }
  // Gives the endpoint up as failed with `why` (e.g. the peer came back on
  // a new connection): nothing more is sent on it, on_error runs from the
  // next Progress, and destroying it closes it by force.
  void Abandon(const Status& why) {
    abandoned_ = true;
    Fail(why);
  }
  ErrorMode error_mode() const { return mode_; }
  // "host:port" of the peer as given to Connect, or what the listener saw.
  const std::string& peer() const { return peer_; }

  void* user = nullptr;  // the owner's tag

 private:
  friend class Worker;
  friend struct Internal;
  Endpoint() = default;
  void Fail(const Status& st);  // from UCX's error handler

  Worker* worker_ = nullptr;
  void* ep_ = nullptr;  // ucp_ep_h
  ErrorMode mode_ = ErrorMode::kNone;  // never kAuto: what was chosen
  bool abandoned_ = false;  // failed by its owner, not by UCX
  std::string peer_;
  Status error_;
  std::function<void(const Status&)> on_error_;
};

class Worker {
 public:
  // Reads UCX's configuration from the environment (UCX_TLS and friends).
  static Result<std::unique_ptr<Worker>> Create();
  // REQUIRES: every Endpoint and Memory made from it is gone. Gives closing
  // endpoints up to 200 ms; if a close is still pending then (a peer that
  // never progresses), UCX's worker is left allocated rather than destroyed
  // with the close in flight (which UCX does not allow).
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Readable when UCX has work; the owner polls it, then calls Progress().
  // (An epoll set of UCX's event fd and a "more to do" eventfd.)
  int event_fd() const { return epfd_.get(); }
  // Runs UCX until it has nothing more to do, then the callbacks that became
  // due, and arms UCX's event fd so that the next wait wakes for new work.
  // Bounded: after kProgressBudget with work still coming (a stream of
  // puts), it returns with event_fd() readable, so the owner's loop gets to
  // its other work (heartbeats, timers) and calls Progress() again.
  void Progress();
  static constexpr std::chrono::microseconds kProgressBudget{2000};

  Status SetAmHandler(uint16_t id, AmHandler handler);

  // Connects to a listener at host:port. The endpoint is usable at once
  // (operations queue until the connection is up); failure to reach the
  // peer shows as error() / on_error, and for kNone only as operations
  // that never complete (spare's heartbeats bound that).
  Result<std::unique_ptr<Endpoint>> Connect(const std::string& host, uint16_t port, ErrorMode mode);
  // Listens on host:port (port 0: any free one); returns the port. Each
  // accepted peer is handed to on_accept (from Progress). One listener per
  // worker.
  Result<uint16_t> Listen(const std::string& host, uint16_t port, ErrorMode mode,
                          std::function<void(std::unique_ptr<Endpoint>)> on_accept);
  // Registers [base, base+size) for remote access.
  Result<std::unique_ptr<Memory>> Map(void* base, size_t size);

  // Endpoint closes still in flight (a graceful close needs the peer to
  // progress too).
  size_t closing() const { return closing_.size(); }
  // Rendezvous messages dropped (every spare send is eager).
  uint64_t refused_rendezvous() const { return refused_rndv_; }

  // The transports UCX chose for an endpoint's lanes, e.g. "tcp" or
  // "posix,cma" (for logs and status: every measurement says what it ran on).
  std::string TransportsOf(const Endpoint& ep) const;

 private:
  friend class Endpoint;
  friend class Memory;
  friend struct Internal;  // UCX's callbacks (transport.cc)
  Worker() = default;
  struct Pending;  // an operation in flight: its Done and its buffer
  Status Start(void* request, Pending* op, const char* what);
  void Defer(std::function<void()> f) { due_.push_back(std::move(f)); }
  void CloseEp(void* ep, bool force);
  Endpoint* Find(void* ep) const;

  void* context_ = nullptr;   // ucp_context_h
  void* worker_ = nullptr;    // ucp_worker_h
  void* listener_ = nullptr;  // ucp_listener_h
  int efd_ = -1;      // UCX's
  UniqueFd kick_;     // eventfd: written when Progress() stopped with work left
  UniqueFd epfd_;     // epoll over efd_ and kick_: event_fd()
  ErrorMode listen_mode_ = ErrorMode::kNone;
  std::function<void(std::unique_ptr<Endpoint>)> on_accept_;
  std::unordered_map<void*, Endpoint*> eps_;  // ucp_ep_h -> Endpoint
  std::unordered_map<uint16_t, AmHandler> handlers_;
  std::vector<std::unique_ptr<std::pair<Worker*, uint16_t>>> am_args_;  // UCX keeps pointers
  uint64_t refused_rndv_ = 0;  // rendezvous messages dropped (we send eager only)
  std::vector<std::function<void()>> due_;  // callbacks for the end of Progress()
  std::vector<void*> closing_;              // close requests still in flight
  int depth_ = 0;                           // > 0 while inside Progress()
};

}  // namespace spare::net
