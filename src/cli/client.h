// cli/client.h — one request to the agent and its answer, for the CLI.
#pragma once

#include <optional>
#include <string>

#include "ipc/wire.h"
#include "spare/status.h"

namespace spare::cli {

// Connects to DIR/agent.sock, sends `request`, waits up to timeout_ms for
// the Ok/Error answer. An Error answer comes back as its Status. No agent:
// kUnavailable naming the socket and how to start one. No answer in time:
// kUnavailable with *timed_out set (callers explain what that means).
Result<ipc::Message> Call(const std::string& agent_dir, const ipc::Message& request, int timeout_ms,
                          bool* timed_out = nullptr);

// Prints "spare: <status>" to stderr; returns the exit code for it
// (2 for usage/config errors, 1 otherwise).
int Fail(const Status& status);

// The --agent value or $SPARE_AGENT; kInvalidArgument when neither.
Result<std::string> AgentDir(const std::string& flag);

}  // namespace spare::cli
