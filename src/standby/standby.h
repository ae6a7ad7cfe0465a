// standby/standby.h — the spare host's daemon (hot protection), its core:
// a UCX listener, one reserved area per protected instance, and the apply
// of committed epochs into replicas.
//
// For each instance an agent reserves (hot/wire.h Reserve), the standby
// holds:
//   - replica memfds of the instance's region sizes (sparse: never-written
//     pages take no memory), mapped MAP_SHARED for the apply;
//   - a staging area of the instance's slot geometry, registered with UCX
//     (its packed key goes back in Reserved) — the agent puts an epoch's
//     slots there, then sends Commit;
//   - the replica's epoch and record, and the owner generation.
// On Commit the slots are validated exactly as the agent validates its own
// (epoch::ValidateEpoch: generation, epoch, parts, bounds, table and data
// hashes) before a byte is written, so a refused epoch changes nothing;
// then they are written into the replica (epoch::WriteEpoch) and the epoch
// is acknowledged. Epochs apply in order; the one already applied is
// acknowledged again (a resent Commit is idempotent).
//
// Failover: an area whose owner (the agent that reserved it) has said
// nothing on either channel (UCX, or the liveness connection of hot/live.h)
// for timeout_ms — a host dead, cut off or stopped — or whose liveness
// connection closed without Leaving (its process died: at once) is
// fenced: the
// standby raises its generation and from then on answers everything about
// that instance from the old owner with Fenced, so the old primary can
// never have another epoch acknowledged (its outputs stay held). Then, with
// agent_dir, the replica is handed to the spare host's agent (ipc Takeover
// over AGENT_DIR/agent.sock: the replica memfds, the record, the launch
// spec), which launches the instance at the same virtual addresses from the
// replica's epoch; the area is freed once the agent answers. A tombstone
// per fenced id keeps refusing the old owner (by its agent name, any
// generation, and anyone at or below the fenced generation).
//
// What a standby restart keeps: with --dir, its tombstones (DIR/standby.json),
// so a fenced owner stays fenced. Replicas live in the process; a restarted
// standby has empty areas and agents resync with a full copy.
// So a standby that dies mid-apply never leaves a replica between two
// epochs: the replica goes with it.
//
// Threading: the loop thread owns everything; the UCX worker's callbacks
// run in Progress. Commits are validated and applied on an apply worker
// (common/worker.h), one at a time and in order, so the loop — heartbeats,
// suspicion, fencing — never waits behind a large epoch; its completion
// acknowledges the epoch on the loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "common/worker.h"
#include "epoch/staging.h"
#include "hot/live.h"
#include "hot/wire.h"
#include "net/transport.h"
#include "spare/status.h"

namespace spare::standby {

struct StandbyOptions {
  std::string name = "standby";  // in Welcome and logs
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port (port() says which)
  // The liveness channel's TCP port (hot/live.h) on `host`, announced to
  // agents in Welcome; 0: any free port (live_port() says which).
  uint16_t live_port = 0;
  net::ErrorMode error_mode = net::ErrorMode::kNone;  // kAuto: per connection (net/transport.h)
  // Heartbeats to every agent every heartbeat_ms, on the UCX connection and
  // on the liveness channel (hot/live.h); an agent silent on both for
  // timeout_ms is suspected, and one whose liveness connection closed
  // without Leaving (its process is gone) at once.
  // Defaults from measurement (BENCHMARKS §13, §14, §16): 30 ms meets the
  // failover targets for a silent host, with no false suspicion in any
  // benchmark on 2 cores, since heartbeats have threads of their own.
  uint32_t heartbeat_ms = 10;
  uint32_t timeout_ms = 30;
  size_t max_instances = 64;
  // The spare host's agent (its DIR), which launches replacements. Empty:
  // a suspected owner is still fenced, but nothing is launched (logged).
  std::string agent_dir;
  // Where the standby keeps its state (DIR/standby.json, a versioned value):
  // its tombstones, so that an owner it fenced stays fenced across a
  // restart. Replicas are not kept: after a restart every instance gets a
  // full copy. Empty: nothing is kept.
  std::string dir;
};

// An instance the standby failed over: its owner, and every generation up
// to the replacement's, are fenced for good.
struct Tombstone {
  uint64_t generation = 0;  // the replacement's; this and below are fenced
  std::string owner;        // the fenced owner's agent name: fenced at any generation
  bool operator==(const Tombstone&) const = default;
};
using Tombstones = std::map<std::string, Tombstone>;  // by instance id

// DIR/standby.json: {"version": 1, "name": ..., "tombstones": [{"id",
// "generation", "owner"}]}. Decode refuses anything else with kBadMessage
// naming `path` and what is wrong (the standby then does not start: a lost
// tombstone could let a fenced owner back).
Result<Tombstones> DecodeStandbyState(std::string_view text, const std::string& path);
std::string EncodeStandbyState(const std::string& name, const Tombstones& tombstones);

class Standby {
 public:
  static Result<std::unique_ptr<Standby>> Create(StandbyOptions options);
  ~Standby();

  uint16_t port() const { return port_; }
  uint16_t live_port() const { return live_->port(); }
  // Readable when there is work (UCX, or the heartbeat timer); then call
  // Progress().
  int event_fd() const { return epoll_.get(); }
  // Sends heartbeats and suspects silent agents when the timer is due,
  // progresses UCX and handles what arrived.
  void Progress();

  // One connected agent, for status and tests.
  struct PeerView {
    std::string agent;  // its Hello name
    bool suspected = false;
    uint64_t heartbeats_sent = 0, heard = 0;
    bool live = false;      // its liveness connection is up
    uint64_t live_beats = 0;  // heartbeats it sent there
  };
  std::vector<PeerView> Peers() const;
  // Agents suspected since start (each once per silence).
  uint64_t suspicions() const { return suspicions_; }

  // For status and tests: one reserved area.
  struct AreaView {
    std::string id;
    uint64_t handle = 0;
    uint64_t generation = 0;
    uint64_t epoch = 0;  // the replica's
    std::string record;
    std::vector<int> region_fds;
  };
  std::vector<AreaView> Areas() const;
  // Messages refused, by reason (the named error's code).
  const std::map<std::string, uint64_t>& refused() const { return refused_; }

  // One failover, as it went (for status, logs and tests).
  struct FailoverView {
    std::string id;
    std::string from;         // the fenced owner's agent name
    uint64_t generation = 0;  // the replacement's
    uint64_t epoch = 0;       // the replica's, which the replacement resumes at
    double detection_ms = 0;  // owner last heard → suspected
    std::string detected_by;  // "close" (its liveness connection closed), "silence" or "request" (Move)
    double fencing_ms = 0;    // suspected → fenced (Fenced sent, tombstone set)
    double handover_ms = 0;   // Takeover sent → the agent answered (launched, attached)
    bool done = false;        // the agent answered
    std::string result;       // "ok", or why the handover failed
  };
  const std::vector<FailoverView>& failovers() const { return failovers_; }
  // Full copies completed (CopyDone), and the bytes they brought.
  uint64_t full_copies() const { return full_copies_; }
  uint64_t full_copy_bytes() const { return full_copy_bytes_; }

 private:
  struct Area;
  struct Peer;
  struct Handover;
  Standby() = default;
  Status LoadState();
  void SaveState();
  void OnAccept(std::unique_ptr<net::Endpoint> ep);
  void OnMessage(net::Endpoint* from, std::span<const std::byte> bytes);
  Status OnReserve(Peer& p, const hot::Header& h, std::span<const std::byte> body);
  Status OnData(Peer& p, const hot::Header& h, std::span<const std::byte> body);
  Status OnCommit(Peer& p, const hot::Header& h, std::span<const std::byte> body);
  Status OnRetire(Peer& p, const hot::Header& h);
  Status OnCopy(Peer& p, const hot::Header& h, std::span<const std::byte> body);
  Status OnCopyDone(Peer& p, const hot::Header& h, std::span<const std::byte> body);
  void Send(net::Endpoint* to, hot::Type type, uint64_t instance, uint64_t generation, uint64_t seq,
            const std::vector<std::byte>& body);
  void Refuse(net::Endpoint* to, const hot::Header& h, const Status& st);
  Result<Area*> AreaFor(const hot::Header& h);
  Result<Area*> OwnedArea(Peer& p, const hot::Header& h);
  void OnTimer();
  // When `agent` was last heard, on UCX (`ucx`) or its liveness channel.
  std::chrono::steady_clock::time_point Heard(const std::string& agent,
                                              std::chrono::steady_clock::time_point ucx) const;
  // Its liveness connection closed without Leaving after `since` (its
  // process is gone).
  bool DiedSince(const std::string& agent, std::chrono::steady_clock::time_point since) const;
  // Fences the area (its owner is suspected) and hands it to agent_dir.
  void FailOver(Area& a, std::chrono::steady_clock::time_point last_heard, const std::string& why,
                const char* detected_by);
  // The fenced area's replica to agent_dir (once no apply is running).
  void HandOver(Area& a, size_t failover);
  void OnApplied(uint64_t handle, uint64_t epoch, const Status& st, bool torn, std::string record);
  void SendFenced(net::Endpoint* to, const hot::Header& h, const std::string& id);
  // Non-null when a message about `id` or `handle` from `agent` at
  // `generation` is fenced.
  const Tombstone* FencedFor(const std::string& id, const std::string& agent,
                             uint64_t generation) const;
  void PollHandovers();

  StandbyOptions options_;
  std::unique_ptr<net::Worker> worker_;
  std::unique_ptr<Worker> applier_;
  hot::LoopPulse pulse_;  // ticked by Progress(): the liveness thread beats while it runs
  std::unique_ptr<hot::LiveServer> live_;
  uint16_t port_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::map<uint64_t, std::unique_ptr<Area>> areas_;  // by handle
  uint64_t next_handle_ = 1;
  std::map<std::string, uint64_t> refused_;
  UniqueFd epoll_, timer_;  // epoll_ holds the worker's fd and timer_
  uint64_t suspicions_ = 0;
  std::chrono::steady_clock::time_point last_tick_{};  // the last OnTimer
  Tombstones tombstones_;
  std::map<uint64_t, std::string> fenced_handles_;  // handle → id, of fenced areas
  std::vector<std::unique_ptr<Handover>> handovers_;
  std::vector<FailoverView> failovers_;
  uint64_t full_copies_ = 0, full_copy_bytes_ = 0;
};

}  // namespace spare::standby
