#include "agent/config_store.h"

#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <cctype>
#include <climits>
#include <cstring>

#include "common/files.h"

namespace spare::agent {
namespace {

constexpr size_t kHeaderBytes = 32;

template <typename T>
void Append(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(v));
}
template <typename T>
T Get(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The key as a file name: bytes outside [A-Za-z0-9_-] (and a leading '.')
// become %XX.
std::string EscapedName(std::string_view key) {
  static const char* kHex = "0123456789ABCDEF";
  std::string name;
  for (size_t i = 0; i < key.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(key[i]);
    bool plain = std::isalnum(c) || c == '_' || c == '-' || (c == '.' && i > 0);
    if (plain) {
      name += static_cast<char>(c);
    } else {
      name += '%';
      name += kHex[c >> 4];
      name += kHex[c & 15];
    }
  }
  return name;
}

// WriteFileAtomic writes NAME.tmp first: that name must fit too.
constexpr size_t kTmpSuffix = 4;

Status CheckKey(std::string_view key) {
  if (key.empty()) return Status(Code::kInvalidArgument, "config key is empty");
  if (key.size() > kMaxConfigKey)
    return Status(Code::kInvalidArgument, "config key of " + std::to_string(key.size()) +
                                              " bytes is longer than " +
                                              std::to_string(kMaxConfigKey));
  size_t name = EscapedName(key).size();
  if (name + kTmpSuffix > NAME_MAX)
    return Status(Code::kInvalidArgument,
                  "config key of " + std::to_string(key.size()) + " bytes escapes to a " +
                      std::to_string(name) + "-byte file name, over the " +
                      std::to_string(NAME_MAX - kTmpSuffix) +
                      " a checkpoint file may have (each byte outside A-Z a-z 0-9 _ - . takes "
                      "3); use a shorter or plainer key");
  return Status::Ok();
}

// Parses a file's bytes; a message saying what is wrong, or empty when ok.
std::string Check(const std::string& bytes, uint64_t* fingerprint, std::string* blob) {
  if (bytes.size() < kHeaderBytes) return "shorter than its header";
  if (Get<uint32_t>(bytes.data()) != kConfigMagic) return "bad magic";
  if (Get<uint32_t>(bytes.data() + 4) != kConfigVersion) return "unknown version";
  uint64_t len = Get<uint64_t>(bytes.data() + 16);
  if (len != bytes.size() - kHeaderBytes) return "length does not match the file size";
  std::string_view data(bytes.data() + kHeaderBytes, len);
  if (XXH64(data.data(), data.size(), 0) != Get<uint64_t>(bytes.data() + 24))
    return "checksum mismatch";
  *fingerprint = Get<uint64_t>(bytes.data() + 8);
  blob->assign(data);
  return {};
}

}  // namespace

std::string_view ConfigHitName(ConfigHit h) {
  switch (h) {
    case ConfigHit::kHit:
      return "hit";
    case ConfigHit::kStale:
      return "stale";
    case ConfigHit::kMissing:
      return "missing";
  }
  return "missing";
}

std::string ConfigStore::PathOf(std::string_view key) const {
  return dir_ + "/" + EscapedName(key);
}

Result<ConfigValue> ConfigStore::Get(std::string_view key, uint64_t fingerprint) const {
  SPARE_RETURN_IF_ERROR(CheckKey(key));
  std::string path = PathOf(key);
  SPARE_ASSIGN_OR_RETURN(std::optional<std::string> bytes, ReadFile(path));
  if (!bytes) return ConfigValue{};
  uint64_t saved = 0;
  std::string blob;
  std::string bad = Check(*bytes, &saved, &blob);
  if (!bad.empty()) {
    spdlog::warn("config checkpoint {} is corrupt ({}); treating key \"{}\" as missing", path, bad,
                 key);
    return ConfigValue{};
  }
  if (saved != fingerprint) return ConfigValue{ConfigHit::kStale, {}};
  return ConfigValue{ConfigHit::kHit, std::move(blob)};
}

Status ConfigStore::Put(std::string_view key, uint64_t fingerprint, std::string_view blob) {
  SPARE_RETURN_IF_ERROR(CheckKey(key));
  if (blob.size() > kMaxConfigBlob)
    return Status(Code::kInvalidArgument, "config value of " + std::to_string(blob.size()) +
                                              " bytes exceeds " + std::to_string(kMaxConfigBlob));
  SPARE_RETURN_IF_ERROR(MakeDirs(dir_));
  std::string bytes;
  bytes.reserve(kHeaderBytes + blob.size());
  Append<uint32_t>(bytes, kConfigMagic);
  Append<uint32_t>(bytes, kConfigVersion);
  Append<uint64_t>(bytes, fingerprint);
  Append<uint64_t>(bytes, blob.size());
  Append<uint64_t>(bytes, XXH64(blob.data(), blob.size(), 0));
  bytes.append(blob);
  return WriteFileAtomic(PathOf(key), bytes, 0644, Durability::kPowerLoss)
      .With("saving config key \"" + std::string(key) + "\"");
}

}  // namespace spare::agent
