// agent/files.h — small file helpers the agent's persistence shares.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "spare/status.h"

namespace spare::agent {

// mkdir -p (mode 0755).
Status MakeDirs(const std::string& path);
// Writes `bytes` to `path` atomically: path.tmp, fsync, rename, fsync dir.
Status WriteFileAtomic(const std::string& path, std::string_view bytes, int mode);
// The whole file; nullopt when it does not exist.
Result<std::optional<std::string>> ReadFile(const std::string& path);

}  // namespace spare::agent
