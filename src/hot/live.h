// hot/live.h — liveness: heartbeats between an agent and its standby on a
// TCP connection and a thread of their own.
//
// Why not on the UCX connection alone: there, heartbeats are sent and read
// by the daemons' loops, and a loop busy for a moment (an agent restarting
// an instance, a burst of puts queued ahead of a heartbeat on TCP, two
// cores shared with a load) was seen silent past a tight timeout: a false
// suspicion, and a needless failover. And UCX (in the error mode spare
// uses) says nothing when the peer process dies. So each agent also opens
// a plain TCP connection to its standby's liveness port (announced in
// Welcome), and a thread on each side, at real-time priority where it may,
// sends a Heartbeat every heartbeat_ms and notes each one it receives:
//   - a loop that stalls is not hidden by its thread: a side beats only
//     while its loop ticked (LoopPulse) within `stall`;
//   - the agent process's death closes the connection at once (the kernel
//     does it), so the standby learns of it in about a millisecond instead
//     of a timeout; a host that goes silent (crash, cut, SIGSTOP) is still
//     judged by the timeout;
//   - a graceful agent stop sends Leaving here first, so its close is not
//     taken for a death.
// The UCX connection keeps its own heartbeats (its health and reconnects);
// the standby's judgement of an agent takes the later of the two.
//
// Bytes: hot/wire.h frames (48-byte header, checksum) back to back on the
// stream; the agent's first frame is Hello{agent}, then Heartbeat and at
// most one Leaving; the standby sends Heartbeats. Any other frame, a bad
// one, or a Hello that does not come within a second closes the
// connection, logged with the named error; that is not taken for a death
// (a silent agent is judged by its timeout).
//
// Threading: each class runs one thread; its public methods are safe to
// call from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/fd.h"
#include "spare/status.h"

namespace spare::hot {

using LiveClock = std::chrono::steady_clock;

// A daemon loop's last tick, for its liveness thread.
class LoopPulse {
 public:
  void Tick() { ns_.store(Now(), std::memory_order_relaxed); }
  bool FreshWithin(std::chrono::milliseconds stall) const {
    return Now() - ns_.load(std::memory_order_relaxed) <=
           std::chrono::duration_cast<std::chrono::nanoseconds>(stall).count();
  }

 private:
  static int64_t Now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               LiveClock::now().time_since_epoch())
        .count();
  }
  std::atomic<int64_t> ns_{Now()};
};

// The standby's side: a listener, one connection per agent.
class LiveServer {
 public:
  struct Options {
    std::string host = "127.0.0.1";  // listens on host:port (port() says which)
    uint16_t port = 0;               // 0: any free port
    uint32_t heartbeat_ms = 10;
    std::chrono::milliseconds stall{1000};  // beats stop once the loop is this late
    size_t max_connections = 512;
  };
  // What the standby knows of one agent's liveness.
  struct AgentLive {
    bool connected = false;        // its connection is up (Hello received)
    LiveClock::time_point last_beat{};  // its last Heartbeat (or Hello)
    uint64_t beats = 0;
    // Its connection closed without Leaving: the agent process is gone.
    bool died = false;
    LiveClock::time_point died_at{};
    LiveClock::time_point leaving_until{};  // a Leaving's grace
  };

  static Result<std::unique_ptr<LiveServer>> Create(Options options, const LoopPulse* pulse);
  ~LiveServer();  // stops the thread; every connection closes
  LiveServer(const LiveServer&) = delete;
  LiveServer& operator=(const LiveServer&) = delete;

  uint16_t port() const { return port_; }
  // Readable after an agent died (its connection closed); ClearEvent()
  // before looking at Get().
  int event_fd() const { return event_.get(); }
  void ClearEvent();
  std::optional<AgentLive> Get(const std::string& agent) const;
  // The agent is back (a new UCX Hello): a death noted before now is over.
  void Revive(const std::string& agent);
  // When its thread last ran (it wakes every heartbeat_ms): a daemon whose
  // loop was late while this ran on was not stopped, and the beats it
  // noted meanwhile are true.
  LiveClock::time_point last_run() const {
    return LiveClock::time_point(std::chrono::nanoseconds(ran_ns_.load()));
  }

 private:
  LiveServer() = default;
  void Run();
  struct Conn;
  void Close(Conn& c, const std::string& why, bool death);

  Options options_;
  const LoopPulse* pulse_ = nullptr;
  UniqueFd listen_, event_, wake_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> ran_ns_{0};
  mutable std::mutex mu_;
  std::map<std::string, AgentLive> agents_;  // guarded by mu_
  std::map<std::string, uint64_t> current_;  // agent → its connection's id (the thread's own)
  std::thread thread_;
};

// The agent's side: one connection to the standby it is told of.
class LiveClient {
 public:
  static Result<std::unique_ptr<LiveClient>> Create(std::string agent,
                                                    std::chrono::milliseconds stall,
                                                    const LoopPulse* pulse);
  ~LiveClient();  // stops the thread, closes the connection (Leave() first, for a graceful stop)
  LiveClient(const LiveClient&) = delete;
  LiveClient& operator=(const LiveClient&) = delete;

  // The standby's liveness port and heartbeat period (from its Welcome).
  // The same address keeps the connection; another replaces it.
  void Target(const std::string& host, uint16_t port, uint32_t heartbeat_ms);
  // Sends Leaving{grace_ms} and waits up to `wait` for it to be written.
  // Returns whether it was.
  bool Leave(uint32_t grace_ms, std::chrono::milliseconds wait);
  // The standby's last Heartbeat on this channel (epoch 0: none yet).
  LiveClock::time_point last_heard() const;
  bool connected() const { return connected_.load(); }

 private:
  LiveClient() = default;
  void Run();

  std::string agent_;
  std::chrono::milliseconds stall_{1000};
  const LoopPulse* pulse_ = nullptr;
  UniqueFd wake_;
  std::atomic<bool> stop_{false}, connected_{false};
  std::atomic<int64_t> heard_ns_{0};
  mutable std::mutex mu_;
  std::string host_;            // guarded by mu_
  uint16_t port_ = 0;           // guarded by mu_
  uint32_t heartbeat_ms_ = 10;  // guarded by mu_
  uint64_t target_version_ = 0;        // guarded by mu_
  std::optional<uint32_t> leave_ms_;   // guarded by mu_
  bool left_ = false;                  // guarded by mu_
  std::condition_variable left_cv_;
  std::thread thread_;
};

// Gives the calling thread real-time priority (SCHED_RR 1) if it may, else
// the highest nice value it may; says which.
std::string RaiseThreadPriority();

}  // namespace spare::hot
