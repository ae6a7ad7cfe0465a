#include "agent/body.h"

namespace spare::agent {
namespace {

// A short rendering of a bad value for error messages (never throws: the
// value came out of a successful parse, so it dumps; replace guards odd bytes).
std::string Shown(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

}  // namespace

Status Body::Missing(const char* key) const {
  return Status(Code::kBadMessage, what_ + ": field \"" + key + "\" is missing");
}

Status Body::WrongType(const char* key, const char* want) const {
  return Status(Code::kBadMessage, what_ + ": field \"" + key + "\" must be " + want + ", got " +
                                       Shown(json_.at(key)));
}

Result<std::string> Body::String(const char* key) const {
  auto it = json_.find(key);
  if (it == json_.end()) return Missing(key);
  if (!it->is_string()) return WrongType(key, "a string");
  return it->get<std::string>();
}

Result<uint64_t> Body::Uint(const char* key) const {
  auto it = json_.find(key);
  if (it == json_.end()) return Missing(key);
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0)
    return static_cast<uint64_t>(it->get<int64_t>());
  return WrongType(key, "a non-negative integer");
}

Result<bool> Body::Bool(const char* key) const {
  auto it = json_.find(key);
  if (it == json_.end()) return Missing(key);
  if (!it->is_boolean()) return WrongType(key, "true or false");
  return it->get<bool>();
}

Result<std::vector<std::string>> Body::StringArray(const char* key) const {
  auto it = json_.find(key);
  if (it == json_.end()) return Missing(key);
  if (!it->is_array()) return WrongType(key, "an array of strings");
  std::vector<std::string> out;
  for (const auto& v : *it) {
    if (!v.is_string()) return WrongType(key, "an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<std::vector<std::string>> Body::StringMap(const char* key) const {
  auto it = json_.find(key);
  if (it == json_.end()) return Missing(key);
  if (!it->is_object()) return WrongType(key, "an object of strings");
  std::vector<std::string> out;
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    if (!kv.value().is_string()) return WrongType(key, "an object of strings");
    if (kv.key().empty() || kv.key().find('=') != std::string::npos)
      return Status(Code::kBadMessage, what_ + ": field \"" + key + "\" has a bad name \"" +
                                           kv.key() + "\" (empty or containing '=')");
    out.push_back(kv.key() + "=" + kv.value().get<std::string>());
  }
  return out;
}

Result<std::string> Body::String(const char* key, std::string dflt) const {
  if (!json_.contains(key)) return dflt;
  return String(key);
}

Result<uint64_t> Body::Uint(const char* key, uint64_t dflt) const {
  if (!json_.contains(key)) return dflt;
  return Uint(key);
}

Result<bool> Body::Bool(const char* key, bool dflt) const {
  if (!json_.contains(key)) return dflt;
  return Bool(key);
}

}  // namespace spare::agent
