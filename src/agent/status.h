// agent/status.h — what `spare status` and `spare metrics` show.
//
// Status JSON of one instance (stable field names; `spare status --json`):
//   id, pid (0: no process), policy, state, epoch, generation, restarts,
//   last_restart_ms (null: never restarted), tracker, reason,
//   regions [{name, address, size}], epochs_applied, bytes_applied,
//   apply_seconds
// Metric series carry {instance="ID",id="ID"}. Metrics are rendered from that JSON, so the CLI
// (from a Status answer) and the agent's HTTP endpoint print the same text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "agent/instance.h"

namespace spare::agent {

// standby_suspected: the agent's standby is silent past its timeout (policy hot).
nlohmann::json InstanceStatusJson(const Instance& inst, bool standby_suspected = false);

// Prometheus text exposition (format 0.0.4) of a Status answer body.
// kBadMessage naming the instance and field when the body lacks one.
Result<std::string> MetricsText(const nlohmann::json& status);

}  // namespace spare::agent
