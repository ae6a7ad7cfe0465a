// agent/agent.h — the per-host agent: launches and supervises instances,
// owns their committed images and staging areas, applies their epochs.
//
// One loop thread owns everything: an epoll loop over the agent socket
// (DIR/agent.sock), each client connection, each instance's pidfd, a
// signalfd (SIGTERM/SIGINT end the loop; instances keep running and are
// re-adopted by the next agent), a timerfd (stop deadlines), the
// completions of its two workers and, when configured, the HTTP metrics
// endpoint. Slow work runs on the workers (common/worker.h), so the loop
// answers within milliseconds whatever the instances commit:
//   apply worker  validates and writes epochs into committed images
//                 (apply.cc), one at a time, in order;
//   io worker     writes state.json and config checkpoints (with fsync).
//
// Code map: agent.cc (setup, loop, watches), connection.cc (socket I/O,
// dispatch), handlers_instance.cc (Attach, Region, Commit, Config*),
// apply.cc (epochs on the apply worker, Released/Durable, torn images),
// handlers_cli.cc (Run, Status, Stop), supervisor.cc (launch, crash,
// restart, stop), persistence.cc (state.json, adoption at start),
// metrics_http.cc, status.cc (status JSON, Prometheus text).
//
// Ownership: the agent owns every fd and mapping of every instance; an
// instance only ever receives duplicates. Threading: not thread-safe; all
// methods from the thread that created it.
#pragma once

#include <sys/types.h>

#include <deque>
#include <map>
#include <span>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "agent/instance.h"
#include "agent/options.h"
#include "agent/process.h"
#include "common/worker.h"
#include "common/fd.h"
#include "hot/live.h"
#include "runtime/exit_helper.h"
#include "ipc/wire.h"
#include "spare/status.h"

namespace spare::agent {

struct ApplyResult;  // apply.cc

class Agent {
 public:
  // Creates DIR, takes DIR/agent.lock, listens on DIR/agent.sock (a stale
  // socket nobody answers on is replaced; a live agent is refused with
  // kAlreadyExists), loads DIR/state.json and adopts the instances that are
  // still alive. `launcher` defaults to posix_spawn (process.h).
  static Result<std::unique_ptr<Agent>> Create(AgentOptions options,
                                               std::unique_ptr<Launcher> launcher = nullptr);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Serves until SIGTERM/SIGINT (with handle_signals) or RequestStop().
  // Leaves instances running; saves state; removes the socket.
  Status Run();
  // One round of the loop: waits up to timeout_ms for events and handles
  // them. For tests that drive the agent step by step.
  Status PollOnce(int timeout_ms);
  void RequestStop() { stop_requested_ = true; }
  // Waits for every job posted to the workers (applies, state writes) and
  // runs their completions. For tests and shutdown.
  void WaitIdle();

  // Serves an already-connected SEQPACKET socket as if it had been
  // accepted (tests use one end of a socketpair).
  Status AddConnection(UniqueFd sock);

  const std::string& dir() const { return options_.dir; }
  std::string socket_path() const { return options_.dir + "/agent.sock"; }
  const Instance* Find(std::string_view id) const;
  // The body of the answer to Status: {"agent": {...}, "instances": [...]}.
  // `budget`: bytes the answer may take (0: no bound); ended instances
  // past it are left out and counted in agent.instances_omitted.
  nlohmann::json StatusJson(size_t budget = 0) const;

 private:
  struct Outgoing {
    std::string bytes;
    std::vector<UniqueFd> fds;
  };
  struct Conn {
    UniqueFd fd;
    uint64_t serial = 0;
    uint64_t watch = 0;
    pid_t peer_pid = 0;
    std::string instance_id;  // set by a successful Attach
    std::deque<Outgoing> out;
    bool want_write = false;
    bool dead = false;
  };
  struct HttpConn {
    UniqueFd fd;
    uint64_t watch = 0;
    std::string in, out;
    size_t sent = 0;
  };
  enum class WatchKind {
    kListen,
    kSignal,
    kTimer,
    kHttpListen,
    kConn,
    kHttpConn,
    kPidfd,
    kWorker,
    kStandby
  };
  struct Watch {
    WatchKind kind;
    int fd = -1;
    std::string id;  // kPidfd: instance id
  };

  explicit Agent(AgentOptions options, std::unique_ptr<Launcher> launcher);

  // agent.cc
  Status Setup();
  Status TakeLock();
  Status OpenSocket();
  Status SetupSignals();
  Result<uint64_t> AddWatch(int fd, uint32_t events, Watch w);
  void ModifyWatch(uint64_t token, int fd, uint32_t events);
  void RemoveWatch(uint64_t token, int fd);
  void HandleEvent(uint64_t token, uint32_t events);
  void AcceptClients();
  void OnSignal();
  void ReapOrphans();
  void OnTimer();
  void ArmTimer();
  void Shutdown();
  std::string InstanceDir(const std::string& id) const;
  Instance* FindMutable(std::string_view id);

  // connection.cc
  void ReadConn(int fd, size_t max_messages);
  std::optional<ipc::Message> Dispatch(Conn& conn, ipc::Message& msg);
  void Send(Conn& conn, ipc::Message msg);
  void SendTo(ConnRef ref, ipc::Message msg);
  void FlushConn(Conn& conn);
  void CloseConn(int fd);
  void SweepDeadConns();
  Conn* ConnOf(ConnRef ref);
  static ConnRef RefOf(const Conn& conn) { return {conn.fd.get(), conn.serial}; }

  // handlers_instance.cc
  std::optional<ipc::Message> OnAttach(Conn& conn, ipc::Message& msg);
  Status CheckAttach(const Instance& inst, const Conn& conn, const ipc::Message& msg, uint64_t pid,
                     bool reattach) const;
  Status AdoptImage(Instance& inst, ipc::Message& msg, uint64_t durable_epoch);
  ipc::Message AttachReply(Instance& inst, bool reattach);
  std::optional<ipc::Message> OnRegion(Conn& conn, ipc::Message& msg);
  ipc::Message CreateRegion(Instance& inst, const std::string& name, uint64_t rounded,
                            uint64_t address);
  std::optional<ipc::Message> OnCommit(Conn& conn, ipc::Message& msg);

  // apply.cc
  void ReleaseImage(Instance& inst);
  Status PostApply(Instance& inst, uint64_t epoch, uint32_t first_slot, uint32_t parts);
  void OnApplied(const std::string& id, uint64_t serial, uint64_t epoch, ApplyResult& result);
  void SendProgress(Instance& inst);
  void MarkTorn(Instance& inst, uint64_t epoch, const Status& why);

  std::optional<ipc::Message> OnConfigGet(Conn& conn, ipc::Message& msg);
  std::optional<ipc::Message> OnConfigPut(Conn& conn, ipc::Message& msg);
  Result<Instance*> AttachedInstance(const Conn& conn, const ipc::Message& msg);

  // handlers_cli.cc
  std::optional<ipc::Message> OnRun(Conn& conn, ipc::Message& msg);
  Result<InstanceSpec> ParseRunSpec(const ipc::Message& msg) const;
  std::optional<ipc::Message> OnStatus(Conn& conn, ipc::Message& msg);
  std::optional<ipc::Message> OnStop(Conn& conn, ipc::Message& msg);
  // From the standby on this (spare) host: a replica to launch as the
  // instance's next generation; answered once the replacement attaches.
  std::optional<ipc::Message> OnTakeover(Conn& conn, ipc::Message& msg);
  Status TakeOver(Conn& conn, ipc::Message& msg);
  // Planned failover (`spare failover`, Runtime::request_failover): stop
  // the instance, wait until the standby acknowledged every epoch it
  // committed, then have the standby launch the replacement (hot Move).
  std::optional<ipc::Message> OnFailover(Conn& conn, ipc::Message& msg);
  void ContinueMove(Instance& inst);

  // supervisor.cc
  Status Launch(Instance& inst);
  Status EnsureStaging(Instance& inst);
  void OnPidfdReadable(const std::string& id);
  void OnProcessGone(Instance& inst, const ExitInfo& exit);
  void OnCrash(Instance& inst, bool relaunch_possible);
  void Relaunch(Instance& inst);
  // A crashed instance relaunches once its epochs are applied (and, with
  // hot and a standby that answers, acknowledged).
  bool RelaunchMustWait(const Instance& inst) const;
  void MaybeRelaunch(Instance& inst);
  void FinishStop(Instance& inst, const ExitInfo& exit);
  void ForgetProcess(Instance& inst);
  void AnswerRun(Instance& inst, const Status& error);
  void AnswerStops(Instance& inst);
  void OnAttached(Instance& inst);
  Status StartStop(Instance& inst);
  void KillOverdue();
  Status WatchPidfd(Instance& inst);

  // persistence.cc
  void SaveStateOrLog();
  Status LoadAndAdopt();
  void AdoptRecord(InstanceRecord rec);

  // hot_link.cc: the connection to the standby (policy hot)
  struct HotLink;
  Status ConnectStandby();
  void OnStandbyMessage(std::span<const std::byte> bytes);
  void ShipEpoch(Instance& inst, uint64_t epoch, uint32_t first_slot, uint32_t parts);
  void ReserveOnStandby(Instance& inst);
  void RetireOnStandby(Instance& inst);
  // The standby failed the instance over elsewhere: stop it here for good.
  void OnFenced(Instance& inst, const std::string& why);
  // full_copy.cc: the image to a replica that lacks epochs.
  void BeginFullCopy(Instance& inst);
  void ContinueFullCopy(Instance& inst);
  void OnCopyKeys(Instance& inst, std::span<const std::byte> body);
  void EndFullCopy(Instance& inst, bool done);
  static bool CopyShipped(const Instance& inst);
  void SendToStandby(uint8_t type, uint64_t instance, uint64_t generation, uint64_t seq,
                     const std::vector<std::byte>& body);
  void ProgressStandby();
  void OnStandbyTimer();
  void ArmStandbyTimer(uint32_t period_ms);
  void ReconnectStandby(const std::string& why);
  void GoUnprotected(Instance& inst, const std::string& why);
  const char* LossPolicyText() const;
  bool StandbyUnreachable(std::chrono::steady_clock::time_point now) const;
  void BlockCopy(Instance& inst);  // a full copy failed: blocked, retried later
  Status SendData(uint64_t handle, uint64_t generation, uint64_t seq, uint32_t space,
                  uint64_t offset, const std::byte* src, uint64_t len);  // what hot instances do without a standby
  void AnnounceToStandby(uint64_t bytes);
  void LeaveStandby();

  // metrics_http.cc
  Status OpenHttp();
  void AcceptHttp();
  void OnHttp(int fd, uint32_t events);
  void CloseHttp(int fd);

  AgentOptions options_;
  std::unique_ptr<Launcher> launcher_;
  std::unique_ptr<Worker> applier_, io_;
  UniqueFd lock_fd_, listen_fd_, epoll_fd_, signal_fd_, timer_fd_, http_fd_;
  bool socket_owned_ = false;
  bool stop_requested_ = false;
  uint64_t orphans_reaped_ = 0;  // children reaped that were not instances
  SteadyTime started_at_;
  uint64_t next_serial_ = 1;
  uint64_t next_watch_ = 1;
  std::map<std::string, std::unique_ptr<Instance>, std::less<>> instances_;
  std::unordered_map<int, Conn> conns_;
  std::unordered_map<int, HttpConn> http_conns_;
  std::unordered_map<uint64_t, Watch> watches_;
  std::unique_ptr<HotLink> hot_;  // with options_.standby
  // The liveness channel to the standby (hot/live.h), from its first
  // Welcome on; it outlives reconnects of hot_ (a close would be a death).
  hot::LoopPulse pulse_;  // ticked by PollOnce
  std::unique_ptr<hot::LiveClient> live_;
  // With a standby: the last user of this process's address space
  // (runtime/exit_helper.h), so that when the agent is killed its sockets —
  // the liveness connection — close at once instead of after the kernel
  // has torn down its mappings of every image (~100 ms at 1 GiB; the
  // standby then saw silence before the close).
  ExitHelper exit_helper_;
};

}  // namespace spare::agent
