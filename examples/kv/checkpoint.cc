// checkpoint.cc — config_lookup / parse / config_save for spare-kv's files.
#include "checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace kv {
namespace {

// Bump when EncodeConfig/EncodeUsers change layout: old blobs turn stale.
constexpr uint64_t kBlobFormat = 1;
constexpr size_t kMaxFileBytes = 1 << 20;

uint64_t MicrosSince(std::chrono::steady_clock::time_point t0) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
          .count());
}

template <typename T>
spare::Result<T> LoadOne(spare::Runtime& rt, std::string_view key, const std::string& path,
                         std::string_view flag,
                         spare::Result<T> (*parse)(std::string_view, std::string_view),
                         std::string (*encode)(const T&),
                         spare::Result<T> (*decode)(std::string_view), CheckpointReport* rep) {
  const auto t0 = std::chrono::steady_clock::now();
  rep->key = std::string(key);
  rep->path = path;
  SPARE_ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path, flag));
  rep->file_bytes = text.size();
  rep->fingerprint = ConfigFingerprint(key, text);
  rep->state = "off";
  if (rt.protected_mode()) {
    auto found = rt.config_lookup(key, rep->fingerprint);
    if (!found.ok()) {
      return found.status().With("looking up the checkpoint of " + std::string(flag) + " " + path);
    }
    if (found->state == spare::ConfigState::kHit) {
      auto value = decode(found->blob);
      if (value.ok()) {
        rep->state = "hit";
        rep->load_us = MicrosSince(t0);
        return value;
      }
      std::fprintf(stderr, "spare-kv: checkpoint %.*s: %s; parsing %s again\n",
                   static_cast<int>(key.size()), key.data(), value.status().ToString().c_str(),
                   path.c_str());
      rep->state = "stale";
    } else {
      rep->state = found->state == spare::ConfigState::kStale ? "stale" : "missing";
    }
  }
  SPARE_ASSIGN_OR_RETURN(T value, parse(text, path));
  if (rt.protected_mode()) {
    spare::Status st = rt.config_save(key, rep->fingerprint, encode(value));
    if (st.ok()) {
      rep->saved = true;
    } else {
      std::fprintf(stderr,
                   "spare-kv: saving checkpoint %.*s failed (%s); the next start parses %s again\n",
                   static_cast<int>(key.size()), key.data(), st.ToString().c_str(), path.c_str());
    }
  }
  rep->load_us = MicrosSince(t0);
  return value;
}

}  // namespace

spare::Result<std::string> ReadConfigFile(const std::string& path, std::string_view flag) {
  const std::string what = std::string(flag) + " " + path;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return spare::Status(spare::Code::kInvalidArgument, what + ": " + strerror(errno));
  std::string text;
  char buf[16384];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return spare::Status(spare::Code::kInvalidArgument, what + ": " + strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxFileBytes) {
      close(fd);
      return spare::Status(spare::Code::kInvalidArgument,
                           what + ": larger than " + std::to_string(kMaxFileBytes) + " bytes");
    }
  }
  close(fd);
  return text;
}

uint64_t ConfigFingerprint(std::string_view key, std::string_view bytes) {
  const uint64_t seed = XXH64(key.data(), key.size(), kBlobFormat);
  return XXH64(bytes.data(), bytes.size(), seed);
}

spare::Result<LoadedFiles> LoadCheckpointedFiles(spare::Runtime& rt, const std::string& config_path,
                                                 const std::string& users_path) {
  LoadedFiles out;
  if (!config_path.empty()) {
    CheckpointReport rep;
    SPARE_ASSIGN_OR_RETURN(KvConfig config,
                           LoadOne<KvConfig>(rt, "config", config_path, "--config", ParseConfig,
                                             EncodeConfig, DecodeConfig, &rep));
    out.config = std::move(config);
    out.reports.push_back(std::move(rep));
  }
  if (!users_path.empty()) {
    CheckpointReport rep;
    SPARE_ASSIGN_OR_RETURN(Users users, LoadOne<Users>(rt, "users", users_path, "--users",
                                                       ParseUsers, EncodeUsers, DecodeUsers, &rep));
    out.users = std::move(users);
    out.reports.push_back(std::move(rep));
  }
  if (out.config && out.config->requirepass && out.users) {
    return spare::Status(spare::Code::kInvalidArgument,
                         "--config " + config_path + " sets requirepass and --users " + users_path +
                             " is given: set the default user's password in the users file "
                             "instead (user default on >PASSWORD)");
  }
  return out;
}

}  // namespace kv
