// common/files.h — small file helpers for what the agent and the standby persist.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "spare/status.h"

namespace spare {

// mkdir -p (std::filesystem::create_directories: mode 0777 & ~umask).
Status MakeDirs(const std::string& path);
// Whether a write must survive power loss (fsync) or only a crash of the
// process (rename alone is atomic against that).
enum class Durability { kProcessCrash, kPowerLoss };
// Writes `bytes` to `path` atomically: path.tmp, rename; with kPowerLoss
// also fsync of the file before and of the directory after the rename.
Status WriteFileAtomic(const std::string& path, std::string_view bytes, int mode,
                       Durability durability);
// The whole file; nullopt when it does not exist.
Result<std::optional<std::string>> ReadFile(const std::string& path);

}  // namespace spare
