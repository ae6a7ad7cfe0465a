// agent/config_store.h — configuration checkpoints of one instance (seed 002).
//
// Each key is one file under DIR/instances/ID/config/, so checkpoints
// survive agent restarts. File layout (little endian):
//   u32 magic "SPCF" | u32 version 1 | u64 fingerprint | u64 length
//   | u64 XXH64(blob) | blob
// A file that fails any check is treated as missing (and logged), so the
// instance just redoes discovery. Writes are atomic (tmp + fsync + rename).
//
// Key names are free text up to 200 bytes; bytes outside [A-Za-z0-9_-]
// (and a leading '.') are %XX-escaped in the file name. A key whose
// escaped name (plus the ".tmp" of the atomic write) would exceed NAME_MAX
// is refused up front with kInvalidArgument, before any file is touched.
//
// Threading: one thread (the agent's loop).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "spare/status.h"

namespace spare::agent {

inline constexpr uint32_t kConfigMagic = 0x46435053;  // "SPCF"
inline constexpr uint32_t kConfigVersion = 1;
inline constexpr size_t kMaxConfigKey = 200;
inline constexpr size_t kMaxConfigBlob = 128 * 1024;

enum class ConfigHit { kHit, kStale, kMissing };
std::string_view ConfigHitName(ConfigHit h);

struct ConfigValue {
  ConfigHit state = ConfigHit::kMissing;
  std::string blob;  // only for kHit
};

class ConfigStore {
 public:
  explicit ConfigStore(std::string dir) : dir_(std::move(dir)) {}

  // kInvalidArgument for an empty or overlong key.
  Result<ConfigValue> Get(std::string_view key, uint64_t fingerprint) const;
  Status Put(std::string_view key, uint64_t fingerprint, std::string_view blob);

  // The file that holds `key` (escaped name).
  std::string PathOf(std::string_view key) const;

 private:
  std::string dir_;
};

}  // namespace spare::agent
