// agent/body.h — reading message bodies without trusting them.
//
// Every accessor checks presence and type and returns a kBadMessage that
// names the message and the field, so a malformed request is answered
// with an Error saying exactly what was wrong. Nothing here throws.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "spare/status.h"

namespace spare::agent {

class Body {
 public:
  // `what` names the message in errors ("Commit", "Run").
  Body(const nlohmann::json& json, std::string what) : json_(json), what_(std::move(what)) {}

  // Required fields.
  Result<std::string> String(const char* key) const;
  Result<uint64_t> Uint(const char* key) const;
  Result<bool> Bool(const char* key) const;
  Result<std::vector<std::string>> StringArray(const char* key) const;
  // An object of string values, as "K=V" strings in key order.
  Result<std::vector<std::string>> StringMap(const char* key) const;

  // Optional fields: the default when absent, an error when present but
  // of the wrong type.
  Result<std::string> String(const char* key, std::string dflt) const;
  Result<uint64_t> Uint(const char* key, uint64_t dflt) const;
  Result<bool> Bool(const char* key, bool dflt) const;

  bool Has(const char* key) const { return json_.contains(key); }

 private:
  Status Missing(const char* key) const;
  Status WrongType(const char* key, const char* want) const;
  const nlohmann::json& json_;
  std::string what_;
};

}  // namespace spare::agent
