// agent/hot_link.h — the agent's connection to its standby (policy hot).
//
// One UCX endpoint to the standby named by --standby (net/transport.h),
// speaking hot/wire.h: Hello, then per hot instance a Reserve, and for each
// epoch a put of its staging slots into the standby's staging area, a
// flush, and a Commit; the standby's Ack makes the epoch durable (with the
// local apply) and frees its slots (EpochQueue). Until the standby has the
// instance's area, its epochs wait in Instance::to_ship and their outputs
// stay held.
//
// Heartbeats both ways: the agent sends one every heartbeat_ms the standby
// announced in Welcome, and suspects the standby after its timeout_ms of
// silence (logged; hot instances keep holding their outputs).
//
// A replica that lacks epochs only the image holds now gets a full copy
// (full_copy.cc). A standby silent for long is reconnected; every hot
// instance then reserves again and ships what the replica lacks. A Fenced
// answer (the standby failed the instance over elsewhere) stops it here.
//
// Threading: the agent's loop thread; the worker's callbacks run inside
// Agent::ProgressStandby().
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "agent/instance.h"
#include "common/fd.h"
#include "net/transport.h"

namespace spare::agent {

struct Instance::FullCopy {
  enum class Phase { kQuiescing, kKeys, kPutting, kDone };
  Phase phase = Phase::kQuiescing;
  uint64_t epoch = 0;  // the image's, being copied
  std::string record;
  uint64_t seq = 0;    // the Copy request's
  struct Extent {
    uint32_t region;
    uint64_t offset, length;
  };
  std::vector<Extent> extents;
  size_t next = 0;        // extent being put
  uint64_t next_off = 0;  // bytes of it already put
  uint64_t total = 0, done = 0, in_window = 0;
  int last_logged_quarter = 0;
  std::vector<std::pair<std::byte*, size_t>> maps;  // the image, read-only
  std::vector<std::unique_ptr<net::RemoteKey>> keys;
  std::vector<uint64_t> remote;  // each replica region's address on the standby
  SteadyTime started{};

  ~FullCopy();  // unmaps the image
};

struct Agent::HotLink {
  std::string host;
  uint16_t port = 0;
  std::unique_ptr<net::Worker> worker;
  std::unique_ptr<net::Endpoint> ep;
  uint64_t watch = 0;
  bool welcomed = false;
  std::string standby_name;
  uint64_t next_seq = 1;
  std::map<uint64_t, std::string> reserving;  // Reserve seq -> instance id
  // Heartbeats: ours every heartbeat_ms (the standby's, from Welcome); the
  // standby is suspected after timeout_ms without any message from it.
  UniqueFd timer;
  uint64_t timer_watch = 0;
  uint32_t heartbeat_ms = 10, timeout_ms = 30;  // until Welcome says the standby's
  std::chrono::steady_clock::time_point last_heard{};
  std::chrono::steady_clock::time_point connected_at{};
  bool suspected = false;
  // The last reconnect could not build a new link (no UCX worker or
  // endpoint: its network device down, no route): this old one is kept,
  // taken as unreachable, and the timer tries again after backoff_ms.
  bool connect_failed = false;
  uint64_t heartbeats_sent = 0, suspicions = 0, reconnects = 0;
  uint64_t send_failures = 0;  // sends its endpoint refused (logged 1 in 1000)
  uint32_t backoff_ms = 100;  // before reconnecting a failed endpoint
  // The connection's lanes include TCP: bulk bytes go in Data messages, not
  // puts (UCX 1.13's emulated puts over TCP abort the standby when this
  // agent dies mid-put: hot/wire.h). Decided at Welcome, once wired.
  bool data_by_message = false;
};

}  // namespace spare::agent
