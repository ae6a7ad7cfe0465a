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
// Not built yet (issue 8): the full copy of an image the replica lacks,
// reconnects, fencing and failover. An instance whose replica
// is behind its image is `standby_blocked`: its outputs stay held.
//
// Threading: the agent's loop thread; the worker's callbacks run inside
// Agent::ProgressStandby().
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "common/fd.h"
#include "net/transport.h"

namespace spare::agent {

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
  uint32_t heartbeat_ms = 10, timeout_ms = 100;
  std::chrono::steady_clock::time_point last_heard{};
  bool suspected = false;
  uint64_t heartbeats_sent = 0, suspicions = 0;
};

}  // namespace spare::agent
