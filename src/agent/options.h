// agent/options.h — what an agent is started with: its directory and the
// defaults it gives instances that `spare run` does not override.
//
// agent.toml (--config, else DIR/agent.toml if present; every key optional;
// anything else is an error):
//   slot_count = 8               # staging slots per instance
//   slot_size = 16777216         # bytes per slot (or "16MiB")
//   max_restarts = 5             # crashes tolerated within restart_window_s
//   restart_window_s = 60
//   metrics_port = 9464          # serve GET /metrics over HTTP (0: off)
//   metrics_host = "127.0.0.1"   # the address it binds (an IPv4 literal;
//                                # "0.0.0.0" exposes it on every interface)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "epoch/staging.h"
#include "net/transport.h"
#include "spare/status.h"

namespace spare::agent {

struct AgentOptions {
  std::string dir;  // holds agent.sock, state.json, instances/
  uint32_t slot_count = 8;
  uint64_t slot_size = 16ULL << 20;
  uint32_t max_restarts = 5;
  uint64_t restart_window_s = 60;
  uint16_t metrics_port = 0;   // 0: no HTTP endpoint
  std::string metrics_host = "127.0.0.1";  // loopback unless asked otherwise
  // "HOST:PORT" of the standby that protects this agent's `hot` instances
  // (empty: none; `hot` is then refused).
  std::string standby;
  // On a graceful stop (instances stay up), how long the standby is asked
  // not to fail this agent's hot instances over while the next agent
  // takes them back (hot Leaving).
  uint32_t standby_grace_ms = 10'000;
  // When no standby acknowledges (unreachable past its timeout, or never
  // answering): hot instances hold their outputs (false, the default), or
  // go on unprotected, released after the local apply alone, until a
  // standby is back and a full copy has made them protected again (true:
  // --on-standby-loss=continue).
  bool continue_on_standby_loss = false;
  // UCX error handling of the connection to the standby (it must agree with
  // the standby's --error-mode; net/transport.h says what auto picks).
  net::ErrorMode standby_error_mode = net::ErrorMode::kNone;
  bool handle_signals = true;  // SIGTERM/SIGINT end Run(); off in unit tests
  // Test seam: how the apply worker writes epochs into region memfds
  // (a fault injector); empty: pwrite(2). Never set from configuration.
  epoch::WriteFn apply_write;
};

// Limits shared by the config file, `spare run` flags and the Run message.
inline constexpr uint32_t kMaxSlotCount = 1024;
inline constexpr uint64_t kMinSlotSize = 128 * 1024;  // == epoch::kMinSlotSize
inline constexpr uint64_t kMaxSlotSize = 1ULL << 30;
inline constexpr uint32_t kMaxMaxRestarts = 1'000'000;
inline constexpr uint64_t kMaxRestartWindowS = 7 * 24 * 3600;

// Checks one value against the limits; the error names `key`.
Status CheckSlotCount(std::string_view key, uint64_t v);
Status CheckSlotSize(std::string_view key, uint64_t v);
Status CheckMaxRestarts(std::string_view key, uint64_t v);
Status CheckRestartWindowS(std::string_view key, uint64_t v);

// "16777216", "16MiB", "16M", "64KiB", "1G" → bytes (binary units: K, KB
// and KiB are all 1024), read by CLI::AsSizeValue like the CLI's size flags.
// kInvalidArgument names the text.
Result<uint64_t> ParseBytes(std::string_view text);

// The metrics listener's address: an IPv4 literal or "localhost"
// (127.0.0.1). kInvalidArgument names `key` and the text.
Result<std::string> CheckMetricsHost(std::string_view key, std::string_view host);
// "HOST:PORT" (`spare agent --metrics`), PORT 1 to 65535, HOST as above.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
Result<HostPort> ParseHostPort(std::string_view text);

// Reads agent.toml into *options (keeps the defaults of absent keys).
// kInvalidArgument names the file, the key and what is wrong with it.
Status LoadAgentConfig(const std::string& path, AgentOptions* options);
// The same from the file's text (`path` names it in errors). On an error
// *options is unchanged.
Status ParseAgentConfig(std::string_view text, const std::string& path, AgentOptions* options);

}  // namespace spare::agent
