// users.h — spare-kv's users file (--users FILE, a subset of Redis' ACL
// file), the table AUTH checks, and its checkpoint blob.
//
// One user per line, `#` comments:
//   user NAME RULE...
// Rules, applied left to right as in Redis:
//   on | off          enabled or not (a user is off unless it says on)
//   >PASSWORD         adds a password     <PASSWORD  removes one
//   nopass            any password works  resetpass  no passwords, not nopass
//   reset             off, no passwords, not nopass
//   ~* allkeys &* allchannels +@all allcommands
//                     full access: accepted, and the only access there is
//                     (narrower key/command rules are refused, not ignored)
// A line that is not `user ...`, an unknown rule, a rule narrower than full
// access, or a user named twice is an error naming the file and the line.
// Passwords are kept as given (the checkpoint blob holds them too).
//
// With a users file, every connection must AUTH before other commands:
// `AUTH NAME PASSWORD`, or `AUTH PASSWORD` for the user named `default`.
//
// Threading: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace kv {

struct User {
  std::string name;
  bool enabled = false;
  bool nopass = false;
  std::vector<std::string> passwords;
  bool operator==(const User&) const = default;
};

struct Users {
  std::vector<User> users;  // in file order, names unique

  // True when `name` exists, is on, and `password` is one of its
  // passwords (or it is nopass). Compares in time independent of where
  // the passwords differ.
  bool Check(std::string_view name, std::string_view password) const;
  bool operator==(const Users&) const = default;
};

spare::Result<Users> ParseUsers(std::string_view text, std::string_view file);

// The checkpoint blob of a parsed users table, and back (kBadMessage on
// anything Encode did not produce).
std::string EncodeUsers(const Users& users);
spare::Result<Users> DecodeUsers(std::string_view blob);

}  // namespace kv
