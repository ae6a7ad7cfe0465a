// agent/state.h — the agent's persisted state: a plain, versioned value.
//
// DIR/state.json holds what a new agent needs to pick up where the last one
// stopped: each instance's launch spec, its pid (with the pid's start time,
// to tell a live instance from a reused pid), its generation, lifecycle
// state, crash history and region table. It is rebuilt into live objects
// by the agent (agent/persistence.cc), never a dump of them.
//
// Written atomically (tmp file, rename) on lifecycle changes only: launch,
// attach, region creation, crash, stop, torn image — encoded on the agent
// loop, written by its io worker. The epoch in
// it may lag the committed image; the instance reports its own on reattach.
//
// The file holds the instances' environments, so it is created mode 0600.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace spare::agent {

inline constexpr uint32_t kStateVersion = 1;

enum class InstanceState {
  kStarting,    // launched, not attached yet (first launch)
  kRunning,     // attached
  kRestarting,  // relaunched after a crash, not attached yet
  kAdopting,    // found alive by a new agent, waiting for its reattach
  kStopping,    // SIGTERM sent by `spare stop`
  kStopped,     // stopped by `spare stop`; committed image released
  kExited,      // exited with status 0
  kFailed,      // crash loop, exec failure, or lost while the agent was down
};
std::string_view StateName(InstanceState s);
std::optional<InstanceState> StateFromName(std::string_view name);
// True while a process may exist for the instance.
bool IsLive(InstanceState s);

// What `spare run` asked for. Enough to launch the instance again.
struct InstanceSpec {
  std::string id;
  std::string policy = "local";
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "K=V", without the SPARE_* the agent adds
  std::string cwd;
  uint32_t slot_count = 0;
  uint64_t slot_size = 0;
  uint32_t max_restarts = 0;
  uint64_t restart_window_ms = 0;
  bool operator==(const InstanceSpec&) const = default;
};

struct RegionRecord {
  std::string name;
  uint32_t index = 0;
  uint64_t address = 0;
  uint64_t size = 0;  // page rounded
  bool operator==(const RegionRecord&) const = default;
};

struct InstanceRecord {
  InstanceSpec spec;
  InstanceState state = InstanceState::kStarting;
  std::string reason;                   // why failed/exited/stopped; empty otherwise
  int64_t pid = 0;                      // 0: no process
  uint64_t pid_start_time = 0;          // field 22 of /proc/PID/stat (clock ticks since boot)
  uint64_t generation = 0;              // bumped on every launch; 0 = never launched
  uint32_t restarts = 0;                // relaunches after crashes since `spare run`
  std::vector<int64_t> crash_times_ms;  // wall clock, newest last (bounded)
  uint64_t epoch = 0;                   // may lag the committed image
  bool image_torn = false;              // an apply failed for good: never resume from the image
  bool fenced = false;                  // failed over elsewhere (policy hot): never resume here
  std::vector<RegionRecord> regions;    // in index order
  bool operator==(const InstanceRecord&) const = default;
};

struct AgentStateValue {
  uint32_t version = kStateVersion;
  std::vector<InstanceRecord> instances;
  bool operator==(const AgentStateValue&) const = default;
};

nlohmann::json ToJson(const AgentStateValue& state);
// Trusts nothing (the file becomes paths, mappings and pids): kBadMessage
// names a field that is missing or mistyped; kInvalidArgument names a
// value that is wrong: an instance id that is not a plain name
// (CheckInstanceId: never "", "..", a path, a control character or over
// 64 bytes), a region that is not page aligned, is empty, leaves user
// space or overlaps another, a region index out of order, a repeated
// region name or instance id; kUnsupported for a version this agent does
// not know (or a policy it does not implement).
Result<AgentStateValue> StateFromJson(const nlohmann::json& json);

// The file's text (a JSON document).
std::string EncodeState(const AgentStateValue& state);
// Atomic replace of `path` (mode 0600) with `text` from EncodeState.
Status WriteState(const std::string& path, const std::string& text);
Status SaveState(const std::string& path, const AgentStateValue& state);
// nullopt when the file does not exist.
Result<std::optional<AgentStateValue>> LoadState(const std::string& path);

}  // namespace spare::agent
