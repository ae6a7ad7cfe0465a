#include "ipc/body.h"

namespace spare::ipc {
namespace {

// A short rendering of a bad value for error messages (never throws: the
// value came out of a successful parse, so it dumps; replace guards odd bytes).
std::string Shown(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

}  // namespace

const nlohmann::json* Body::Find(const char* key) const {
  if (!json_.is_object()) return nullptr;
  auto it = json_.find(key);
  return it == json_.end() ? nullptr : &*it;
}

Status Body::Missing(const char* key) const {
  return Status(Code::kBadMessage, what_ + ": field \"" + key + "\" is missing");
}

Status Body::WrongType(const char* key, const char* want) const {
  return Status(Code::kBadMessage,
                what_ + ": field \"" + key + "\" must be " + want + ", got " + Shown(*Find(key)));
}

Result<std::string> Body::String(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_string()) return WrongType(key, "a string");
  return v->get<std::string>();
}

Result<uint64_t> Body::Uint(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  if (v->is_number_integer() && v->get<int64_t>() >= 0)
    return static_cast<uint64_t>(v->get<int64_t>());
  return WrongType(key, "a non-negative integer");
}

Result<double> Body::Number(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_number()) return WrongType(key, "a number");
  return v->get<double>();
}

Result<bool> Body::Bool(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_boolean()) return WrongType(key, "true or false");
  return v->get<bool>();
}

Result<std::vector<std::string>> Body::StringArray(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_array()) return WrongType(key, "an array of strings");
  std::vector<std::string> out;
  for (const auto& e : *v) {
    if (!e.is_string()) return WrongType(key, "an array of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

Result<std::vector<int64_t>> Body::IntArray(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_array()) return WrongType(key, "an array of integers");
  std::vector<int64_t> out;
  for (const auto& e : *v) {
    if (!e.is_number_integer() ||
        (e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
      return WrongType(key, "an array of integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

Result<std::vector<std::string>> Body::StringMap(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_object()) return WrongType(key, "an object of strings");
  std::vector<std::string> out;
  for (auto kv = v->begin(); kv != v->end(); ++kv) {
    if (!kv.value().is_string()) return WrongType(key, "an object of strings");
    if (kv.key().empty() || kv.key().find('=') != std::string::npos)
      return Status(Code::kBadMessage, what_ + ": field \"" + key + "\" has a bad name \"" +
                                           kv.key() + "\" (empty or containing '=')");
    out.push_back(kv.key() + "=" + kv.value().get<std::string>());
  }
  return out;
}

Result<Body> Body::Object(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_object()) return WrongType(key, "an object");
  return Body(*v, what_ + "." + key);
}

Result<const nlohmann::json*> Body::Array(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return Missing(key);
  if (!v->is_array()) return WrongType(key, "an array");
  return v;
}

Result<std::string> Body::String(const char* key, std::string dflt) const {
  if (!Has(key)) return dflt;
  return String(key);
}

Result<uint64_t> Body::Uint(const char* key, uint64_t dflt) const {
  if (!Has(key)) return dflt;
  return Uint(key);
}

Result<double> Body::Number(const char* key, double dflt) const {
  if (!Has(key)) return dflt;
  return Number(key);
}

Result<bool> Body::Bool(const char* key, bool dflt) const {
  if (!Has(key)) return dflt;
  return Bool(key);
}

Result<std::optional<double>> Body::NullableNumber(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v || v->is_null()) return std::optional<double>();
  if (!v->is_number()) return WrongType(key, "a number or null");
  return std::optional<double>(v->get<double>());
}

}  // namespace spare::ipc
