// commands.h — spare-kv's command set, executed against a Store.
//
// Execute() runs one parsed request and appends its RESP reply; it never
// touches sockets or the runtime, so the server decides when a reply may
// leave (through the spare gate). Supported, with Redis' semantics and
// error texts: PING ECHO GET SET(EX PX EXAT PXAT NX XX KEEPTTL GET) DEL
// EXISTS INCR INCRBY DECR DECRBY MGET MSET TTL PTTL EXPIRE PEXPIRE PERSIST
// DBSIZE FLUSHALL FLUSHDB INFO QUIT SELECT COMMAND CONFIG(GET RESETSTAT)
// CLIENT(SETNAME SETINFO GETNAME) DEBUG POPULATE AUTH.
//
// Authentication: when options.users is set, a Session that has not
// passed AUTH may run only AUTH and QUIT; anything else is answered
// -NOAUTH (unknown commands and wrong arity are reported first, as Redis
// does). With options.maxmemory > 0, commands that may grow memory (SET,
// MSET, INCR..., DEBUG POPULATE) are refused with -OOM once the store uses
// more than that.
//
// Threading: one thread, with its Store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "store.h"
#include "users.h"

namespace kv {

// The parts of INFO the command layer does not know (server, clients,
// stats, spare): the server provides them.
class InfoSource {
 public:
  virtual ~InfoSource() = default;
  // Appends "field:value\r\n" lines of `section` (lowercase) to *out.
  virtual void AppendInfo(std::string_view section, std::string* out) = 0;
};

struct CommandsOptions {
  int port = 6379;
  std::string bind = "127.0.0.1";
  size_t max_bulk = 512 * 1024 * 1024;
  size_t max_clients = 10000;
  uint64_t maxmemory = 0;               // 0: up to the region
  uint64_t hz = 10;                     // reported by CONFIG GET
  uint64_t max_query_buffer = 1 << 30;  // reported by CONFIG GET
  std::shared_ptr<const Users> users;   // null: no authentication
};

// One connection's state the commands need.
struct Session {
  bool authenticated = false;
  std::string user;  // who authenticated
};

struct CommandStats {
  uint64_t commands = 0;
  uint64_t keyspace_hits = 0;
  uint64_t keyspace_misses = 0;
};

class Commands {
 public:
  // REQUIRES: store outlives this; info may be null (sections left out).
  Commands(Store* store, InfoSource* info, CommandsOptions options)
      : store_(store), info_(info), options_(std::move(options)) {}

  // Runs one request (args non-empty) at CLOCK_REALTIME now_ms for
  // `session` (null: a connection that never authenticated) and appends the
  // reply to *out. Returns true when the connection must close once the
  // reply is written (QUIT).
  bool Execute(std::span<const std::string_view> args, int64_t now_ms, std::string* out,
               Session* session = nullptr);

  const CommandStats& stats() const { return stats_; }

  // Called by long-running commands (DEBUG POPULATE) every few MiB of
  // changes, at a consistent point, so one command does not make an epoch
  // larger than the runtime can stage. Returns false if the commit failed
  // (the command then stops with an error).
  void set_checkpoint(std::function<bool()> checkpoint) { checkpoint_ = std::move(checkpoint); }

 private:
  struct Call {  // one request being executed
    std::span<const std::string_view> args;
    int64_t now_ms;
    std::string* out;
    Session* session;
    bool close = false;
    size_t argc() const { return args.size(); }
  };
  struct Spec;
  static const Spec* Lookup(std::string_view name);

  void Ping(Call& c);
  void Echo(Call& c);
  void Get(Call& c);
  void Set(Call& c);
  void Del(Call& c);
  void Exists(Call& c);
  void Incr(Call& c);
  void Decr(Call& c);
  void IncrBy(Call& c);
  void DecrBy(Call& c);
  void MGet(Call& c);
  void MSet(Call& c);
  void Ttl(Call& c);
  void Pttl(Call& c);
  void Expire(Call& c);
  void PExpire(Call& c);
  void Persist(Call& c);
  void DbSize(Call& c);
  void FlushAll(Call& c);
  void Info(Call& c);
  void Quit(Call& c);
  void Select(Call& c);
  void Command(Call& c);
  void Config(Call& c);
  void Client(Call& c);
  void Debug(Call& c);
  void Auth(Call& c);

  void IncrementBy(Call& c, int64_t delta);
  void ExpireGeneric(Call& c, int64_t unit_ms);
  void TtlGeneric(Call& c, bool ms);
  void Populate(Call& c);
  void AppendInfoSection(std::string_view section, std::string* out);

  Store* store_;
  InfoSource* info_;
  CommandsOptions options_;
  CommandStats stats_;
  std::function<bool()> checkpoint_;
};

}  // namespace kv
