// ipc/json_util.h — reading message bodies without exceptions.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace spare::json {

// True and *out set when body[key] is a non-negative integer.
inline bool GetU64(const nlohmann::json& body, const char* key, uint64_t* out) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_number_integer()) return false;
  if (it->is_number_unsigned()) {
    *out = it->get<uint64_t>();
    return true;
  }
  int64_t v = it->get<int64_t>();
  if (v < 0) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

inline bool GetString(const nlohmann::json& body, const char* key, std::string* out) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}

inline bool GetBool(const nlohmann::json& body, const char* key, bool* out) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_boolean()) return false;
  *out = it->get<bool>();
  return true;
}

}  // namespace spare::json
