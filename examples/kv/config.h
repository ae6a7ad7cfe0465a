// config.h — spare-kv's configuration file (--config FILE, redis.conf
// style) parsed into a KvConfig, and KvConfig's checkpoint blob.
//
// Directives (names case-insensitive, one per line, the last one wins):
//   maxclients N                 1..1000000       connections served at once
//   hz N                         1..500           cron runs per second (expiry sweep,
//                                                 resize steps)
//   maxmemory BYTES              0 = no limit     writes that may grow memory are
//                                                 refused (OOM) past it
//   maxmemory-policy noeviction  the only policy spare-kv has
//   proto-max-bulk-len BYTES     1..512mb         largest argument accepted
//   client-query-buffer-limit BYTES  1mb..4gb     unparsed input per client
//   requirepass PASSWORD         the default user's password ("" = none);
//                                not together with --users
// BYTES takes redis.conf units: 1k = 1000, 1kb = 1024, m, mb, g, gb.
// Any other directive, a missing or extra argument, or a bad value is an
// error naming the file, the line and the directive.
//
// Threading: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "spare/status.h"

namespace kv {

// What the file set; unset fields leave spare-kv's defaults (or flags).
struct KvConfig {
  std::optional<uint64_t> maxclients;
  std::optional<uint64_t> hz;
  std::optional<uint64_t> maxmemory;
  std::optional<uint64_t> proto_max_bulk_len;
  std::optional<uint64_t> client_query_buffer_limit;
  std::optional<std::string> requirepass;
  uint64_t directives = 0;  // directive lines read

  bool operator==(const KvConfig&) const = default;
};

// `file` names the file in errors ("FILE:LINE: ...").
spare::Result<KvConfig> ParseConfig(std::string_view text, std::string_view file);

// The checkpoint blob of a parsed configuration, and back. Decode fails
// (kBadMessage) on anything Encode did not produce.
std::string EncodeConfig(const KvConfig& config);
spare::Result<KvConfig> DecodeConfig(std::string_view blob);

}  // namespace kv
