#include "cli/launch_env.h"

#include <cstdio>
#include <map>

namespace spare::cli {
namespace {

bool IsUtf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

Status CheckName(std::string_view flag, std::string_view name) {
  if (name.empty() || name.find('=') != std::string_view::npos)
    return Status(Code::kInvalidArgument, std::string(flag) + " \"" + std::string(name) +
                                              "\": the variable name is empty or holds '='");
  return Status::Ok();
}

}  // namespace

bool InheritedByDefault(std::string_view name) {
  for (std::string_view n :
       {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
    if (name == n) return true;
  return name.starts_with("LC_") || name.starts_with("SPARE_");
}

Result<nlohmann::json> LaunchEnvironment(const char* const* caller,
                                         const std::vector<std::string>& set,
                                         const std::vector<std::string>& inherit) {
  std::map<std::string, std::string, std::less<>> from_caller;
  for (const char* const* e = caller; e && *e; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    from_caller.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : from_caller)
    if (InheritedByDefault(k)) env[k] = v;
  for (const std::string& name : inherit) {
    SPARE_RETURN_IF_ERROR(CheckName("--env-inherit", name));
    auto it = from_caller.find(name);
    if (it == from_caller.end())
      return Status(Code::kInvalidArgument,
                    "--env-inherit " + name + ": " + name + " is not set in this environment");
    env[name] = it->second;
  }
  for (const std::string& kv : set) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos)
      return Status(Code::kInvalidArgument, "--env \"" + kv + "\": expected NAME=VALUE");
    SPARE_RETURN_IF_ERROR(CheckName("--env", kv.substr(0, eq)));
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, v] : env) {
    if (!IsUtf8(k) || !IsUtf8(v)) {
      std::fprintf(stderr, "spare: warning: not passing %s (not valid UTF-8)\n", k.c_str());
      continue;
    }
    out[k] = v;
  }
  return out;
}

}  // namespace spare::cli
