// checkpoint.h — spare-kv's configuration checkpoints (seed 002): the
// --config and --users files are parsed once and their parsed form is
// saved with the agent, keyed "config" and "users", fingerprinted by the
// file's bytes (XXH64). A restart with an unchanged file takes the saved
// form (a hit) and skips parsing and validation; a changed file is stale:
// parsed, validated and saved again. Each file is its own key, so changing
// one redoes only that one.
//
// Without an agent (--unprotected) the files are just parsed (state "off").
//
// Threading: startup only, on the thread that owns the Runtime.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "spare/runtime.h"
#include "users.h"

namespace kv {

// What loading one file did at this start (INFO's # Checkpoint section).
struct CheckpointReport {
  std::string key;    // "config", "users"
  std::string path;   // the file
  std::string state;  // hit, stale, missing, off (no agent)
  uint64_t fingerprint = 0;
  uint64_t file_bytes = 0;
  uint64_t load_us = 0;  // read + fingerprint + lookup + (parse + save | decode)
  bool saved = false;    // a checkpoint was written at this start
};

struct LoadedFiles {
  std::optional<KvConfig> config;  // set when --config was given
  std::optional<Users> users;      // set when --users was given
  std::vector<CheckpointReport> reports;
};

// Loads the files whose paths are non-empty (see the top of this file).
// Errors name the file (and line, for a parse error); a failed save is
// only logged (the next start parses again).
spare::Result<LoadedFiles> LoadCheckpointedFiles(spare::Runtime& rt, const std::string& config_path,
                                                 const std::string& users_path);

// The file's bytes as fingerprinted; kInvalidArgument naming the file if
// it cannot be read or is over 1 MiB.
spare::Result<std::string> ReadConfigFile(const std::string& path, std::string_view flag);

// XXH64 of the bytes, seeded per key and blob format, so a spare-kv with
// another blob layout never takes an old blob as a hit.
uint64_t ConfigFingerprint(std::string_view key, std::string_view bytes);

}  // namespace kv
