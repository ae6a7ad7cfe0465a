// ipc/body.h — reading JSON bodies without trusting them.
//
// The one reader of message bodies and other untrusted JSON (agent
// requests, agent answers read by the runtime and the CLI, state.json).
// Every accessor checks presence and type and returns a kBadMessage that
// names the message and the field, so a malformed body is answered with
// an error saying exactly what was wrong. Nothing here throws.
//
// Threading: a Body is a view of `json`, which must outlive it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "spare/status.h"

namespace spare::ipc {

class Body {
 public:
  // `what` names the message in errors ("Commit", "Run"). A `json` that is
  // not an object reads as one without fields.
  Body(const nlohmann::json& json, std::string what) : json_(json), what_(std::move(what)) {}

  // Required fields.
  Result<std::string> String(const char* key) const;
  Result<uint64_t> Uint(const char* key) const;
  Result<double> Number(const char* key) const;
  Result<bool> Bool(const char* key) const;
  Result<std::vector<std::string>> StringArray(const char* key) const;
  Result<std::vector<int64_t>> IntArray(const char* key) const;
  // An object of string values, as "K=V" strings in key order.
  Result<std::vector<std::string>> StringMap(const char* key) const;
  // A nested object or array, read with its own Body ("what.key" in errors).
  Result<Body> Object(const char* key) const;
  Result<const nlohmann::json*> Array(const char* key) const;

  // Optional fields: the default when absent, an error when present but
  // of the wrong type.
  Result<std::string> String(const char* key, std::string dflt) const;
  Result<uint64_t> Uint(const char* key, uint64_t dflt) const;
  Result<double> Number(const char* key, double dflt) const;
  Result<bool> Bool(const char* key, bool dflt) const;
  // Absent or null: nullopt.
  Result<std::optional<double>> NullableNumber(const char* key) const;

  bool Has(const char* key) const { return json_.is_object() && json_.contains(key); }
  const std::string& what() const { return what_; }
  const nlohmann::json& json() const { return json_; }

 private:
  const nlohmann::json* Find(const char* key) const;
  Status Missing(const char* key) const;
  Status WrongType(const char* key, const char* want) const;
  const nlohmann::json& json_;
  std::string what_;
};

}  // namespace spare::ipc
