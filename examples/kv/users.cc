// users.cc — the ACL-style users file and AUTH's check.
#include "users.h"

#include <algorithm>

#include "conf_text.h"

namespace kv {
namespace {

constexpr uint64_t kUsersBlobMagic = 0x3153524553555653ull;  // "SVUSERS1"

bool SameSecret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

bool FullAccess(std::string_view rule) {
  return rule == "~*" || rule == "allkeys" || rule == "&*" || rule == "allchannels" ||
         rule == "+@all" || rule == "allcommands";
}

bool NarrowAccess(std::string_view rule) {
  return rule.starts_with('~') || rule.starts_with('%') || rule.starts_with('&') ||
         rule.starts_with('+') || rule.starts_with('-') || rule == "resetkeys" ||
         rule == "resetchannels" || rule == "nocommands";
}

}  // namespace

bool Users::Check(std::string_view name, std::string_view password) const {
  for (const User& u : users) {
    if (u.name != name) continue;
    bool match = u.nopass;
    for (const std::string& p : u.passwords) match |= SameSecret(p, password);
    return u.enabled && match;
  }
  return false;
}

spare::Result<Users> ParseUsers(std::string_view text, std::string_view file) {
  Users table;
  std::vector<size_t> defined_at;  // line of each user
  SPARE_ASSIGN_OR_RETURN(std::vector<ConfigLine> lines, SplitConfigText(text, file));
  for (const ConfigLine& directive : lines) {
    const size_t line_no = directive.line_no;
    const std::vector<std::string>* args = &directive.args;
    if (ToLower((*args)[0]) != "user") {
      return LineError(file, line_no,
                       "expected 'user NAME RULE...', got '" + (*args)[0].substr(0, 64) + "'");
    }
    if (args->size() < 2 || (*args)[1].empty()) {
      return LineError(file, line_no, "'user' needs a user name");
    }
    User u;
    u.name = (*args)[1];
    for (size_t i = 0; i < table.users.size(); ++i) {
      if (table.users[i].name == u.name) {
        return LineError(
            file, line_no,
            "user '" + u.name + "' is already defined on line " + std::to_string(defined_at[i]));
      }
    }
    for (size_t i = 2; i < args->size(); ++i) {
      const std::string& rule = (*args)[i];
      const std::string lower = ToLower(rule);
      if (lower == "on") {
        u.enabled = true;
      } else if (lower == "off") {
        u.enabled = false;
      } else if (rule.starts_with('>')) {
        std::string pass = rule.substr(1);
        if (std::find(u.passwords.begin(), u.passwords.end(), pass) == u.passwords.end()) {
          u.passwords.push_back(std::move(pass));
        }
        u.nopass = false;
      } else if (rule.starts_with('<')) {
        auto it = std::find(u.passwords.begin(), u.passwords.end(), rule.substr(1));
        if (it == u.passwords.end()) {
          return LineError(
              file, line_no,
              "user '" + u.name + "': rule '<...' removes a password it does not have");
        }
        u.passwords.erase(it);
      } else if (lower == "nopass") {
        u.nopass = true;
        u.passwords.clear();
      } else if (lower == "resetpass") {
        u.nopass = false;
        u.passwords.clear();
      } else if (lower == "reset") {
        u.enabled = u.nopass = false;
        u.passwords.clear();
      } else if (FullAccess(lower)) {
      } else if (NarrowAccess(lower)) {
        return LineError(file, line_no,
                         "user '" + u.name + "': rule '" + rule +
                             "' restricts keys or commands, which spare-kv does not support "
                             "(only ~* &* +@all allkeys allchannels allcommands)");
      } else if (rule.starts_with('#') || rule.starts_with('!')) {
        return LineError(file, line_no,
                         "user '" + u.name + "': hashed passwords ('" + rule.substr(0, 1) +
                             "...') are not supported; write '>password'");
      } else {
        return LineError(file, line_no, "user '" + u.name + "': unknown rule '" + rule + "'");
      }
    }
    table.users.push_back(std::move(u));
    defined_at.push_back(line_no);
  }
  return table;
}

std::string EncodeUsers(const Users& users) {
  BlobWriter w;
  w.U64(kUsersBlobMagic);
  w.U64(users.users.size());
  for (const User& u : users.users) {
    w.Str(u.name);
    w.U64((u.enabled ? 1 : 0) | (u.nopass ? 2 : 0));
    w.U64(u.passwords.size());
    for (const std::string& p : u.passwords) w.Str(p);
  }
  return w.data();
}

spare::Result<Users> DecodeUsers(std::string_view blob) {
  BlobReader r(blob);
  bool ok = r.U64() == kUsersBlobMagic;
  const uint64_t n = r.U64();
  Users users;
  // Every user takes at least 24 bytes: n is bounded by the blob's size.
  for (uint64_t i = 0; ok && r.ok() && i < n && i <= blob.size() / 24; ++i) {
    User u;
    u.name = r.Str();
    uint64_t flags = r.U64();
    u.enabled = flags & 1;
    u.nopass = flags & 2;
    const uint64_t np = r.U64();
    for (uint64_t j = 0; r.ok() && j < np && j <= blob.size() / 8; ++j) {
      u.passwords.push_back(r.Str());
    }
    ok = ok && u.passwords.size() == np;
    users.users.push_back(std::move(u));
  }
  if (!ok || !r.ok() || !r.at_end() || users.users.size() != n) {
    return spare::Status(spare::Code::kBadMessage, "not a spare-kv users checkpoint blob");
  }
  return users;
}

}  // namespace kv
