// server.h — spare-kv's event loop: sockets in, commands, replies out
// through the spare gate, one epoch per batch.
//
// One thread, one epoll set: the listening socket, the clients, the
// runtime's fd and a signalfd (SIGTERM/SIGINT). Each loop iteration:
//   1. accept; read every readable client; parse and execute its complete
//      requests (at most max_batch per iteration); the replies of one client
//      are coalesced into one gate send;
//   2. replies go to the gate: if the store has uncommitted changes they
//      depend on the next epoch (rt->pending_epoch()); if not, only on the
//      state of the last commit: they are sent under that epoch (released at
//      once when it is already durable; no empty epoch is made for reads);
//   3. rt->poll() when rt->fd() is readable (releases outputs);
//   4. rt->commit(record) if the store changed — group commit: while an
//      epoch is in flight the changes wait for it to become durable, at
//      most group_commit_us and max_batch requests, so a busy server makes
//      fewer, fuller epochs;
//   5. write what the gate released but the socket could not take (EPOLLOUT),
//      close clients that asked to (QUIT, fatal protocol error, EOF) once
//      all their replies are written.
// While rt->commit_deferred(), the loop commits again at least every 2 ms.
// `hz` times a second (default 10) it also reclaims expired keys and
// advances a table resize.
//
// Unprotected mode (--unprotected) runs the same loop over anonymous
// memory; the gate releases at once and commit() costs nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "commands.h"
#include "resp.h"
#include "spare/runtime.h"
#include "store.h"

namespace kv {

struct ServerOptions {
  int port = 6379;
  std::string bind = "127.0.0.1";
  size_t region_size = size_t{1} << 30;
  // How commit() learns what the store wrote: the store declares its
  // writes (spare/declare.h; only those bytes ship), or the page tracker.
  bool declared_writes = true;
  size_t max_batch = 1024;  // requests per epoch
  // While an epoch is in flight, gather batches into the next one for up to
  // this long (0: commit every batch).
  size_t group_commit_us = 1000;
  size_t max_clients = 10000;
  size_t max_query_buffer = size_t{1} << 30;  // unparsed input per client
  uint64_t hz = 10;                           // cron runs per second
  uint64_t maxmemory = 0;                     // 0: up to the region
  RespLimits limits;
  std::shared_ptr<const Users> users;         // null: no AUTH needed
  std::vector<CheckpointReport> checkpoints;  // what loading --config/--users did
};

class Server : public InfoSource {
 public:
  // Maps the "kv" region, opens (or finds, when resumed) the store in it,
  // and binds the listening socket.
  static spare::Result<std::unique_ptr<Server>> Create(spare::Runtime runtime,
                                                       ServerOptions options);
  ~Server() override;

  // Serves until SIGTERM/SIGINT (returns Ok after a clean shutdown) or a
  // runtime error (returned).
  spare::Status Run();

  void AppendInfo(std::string_view section, std::string* out) override;

  int port() const { return options_.port; }  // the bound port (--port 0 picks one)

 private:
  struct Conn;
  Server(spare::Runtime runtime, ServerOptions options);
  spare::Status Listen();
  void Accept();
  void Read(Conn* c);
  void Execute(Conn* c, size_t* budget);
  void SendReplies();
  spare::Status MaybeCommit();
  void Settle();
  void Close(Conn* c);
  void SetWantWrite(Conn* c, bool on);
  spare::Status Commit();
  spare::Status Shutdown();
  int Timeout() const;
  int64_t CronUs() const { return 1'000'000 / static_cast<int64_t>(options_.hz); }
  void AppendCheckpointInfo(std::string* out) const;
  void Cron(int64_t now_ms);

  spare::Runtime rt_;
  ServerOptions options_;
  bool protected_;
  spare::Arena* arena_ = nullptr;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Commands> commands_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int signal_fd_ = -1;

  std::vector<std::unique_ptr<Conn>> conns_;   // by fd
  std::vector<std::unique_ptr<Conn>> closed_;  // freed at the end of an iteration
  std::vector<Conn*> runnable_;                // have unparsed input
  std::vector<Conn*> touched_;                 // have replies in this batch
  std::vector<Conn*> watch_;                   // replies not yet known to be written
  size_t clients_ = 0;

  uint64_t state_epoch_ = 0;  // epoch covering the last committed state
  uint64_t held_epoch_ = 0;   // epoch of replies waiting for the next commit
  bool read_barrier_ = false;  // replies to reads wait for the next commit (policy hot)
  size_t uncommitted_requests_ = 0;
  int64_t dirty_since_us_ = 0;    // first uncommitted change (monotonic), 0: none
  uint64_t batch_mutations_ = 0;  // store_->mutations() at the last commit
  int64_t now_ms_ = 0;            // CLOCK_REALTIME, for expiry
  int64_t last_commit_us_ = 0;
  int64_t next_cron_us_ = 0;
  int64_t start_ms_ = 0;
  bool stop_ = false;
  spare::Status checkpoint_error_;  // a commit inside a command failed (sticky)
  bool accept_paused_ = false;      // out of fds: the listener is out of epoll

  uint64_t resumed_epoch_ = 0;
  uint64_t connections_total_ = 0;
  uint64_t rejected_ = 0;
  uint64_t protocol_errors_ = 0;
  uint64_t input_bytes_ = 0;
  uint64_t batches_ = 0;
  uint64_t read_only_batches_ = 0;
};

}  // namespace kv
