// commands.cc — command dispatch and the commands themselves.
#include "commands.h"

#include <fnmatch.h>

#include <algorithm>
#include <charconv>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "resp.h"

namespace kv {
namespace {

constexpr std::string_view kErrSyntax = "ERR syntax error";
constexpr std::string_view kErrNotInt = "ERR value is not an integer or out of range";
constexpr std::string_view kErrOverflow = "ERR increment or decrement would overflow";
constexpr std::string_view kErrOom = "OOM command not allowed when used memory > 'maxmemory'.";
// DEBUG POPULATE commits (see set_checkpoint) when its estimated dirty
// bytes reach this: each new key dirties a table page at random (at most the
// whole table) plus its entry.
constexpr size_t kCheckpointBytes = 32 << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) {
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char ch = a[i];
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    if (ch != lower[i]) return false;
  }
  return true;
}

std::string_view FormatInt(int64_t v, char (&buf)[24]) {
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  return {buf, static_cast<size_t>(p - buf)};
}

}  // namespace

// Spec flags.
constexpr int kDenyOom = 1;  // may grow memory: refused past maxmemory
constexpr int kNoAuth = 2;   // allowed before AUTH

struct Commands::Spec {
  std::string_view name;  // lowercase
  int arity;              // > 0: exactly; < 0: at least -arity (name included)
  void (Commands::*fn)(Call&);
  int flags = 0;
};

const Commands::Spec* Commands::Lookup(std::string_view name) {
  static const Spec kSpecs[] = {
      {"ping", -1, &Commands::Ping},
      {"echo", 2, &Commands::Echo},
      {"get", 2, &Commands::Get},
      {"set", -3, &Commands::Set, kDenyOom},
      {"del", -2, &Commands::Del},
      {"unlink", -2, &Commands::Del},
      {"exists", -2, &Commands::Exists},
      {"incr", 2, &Commands::Incr, kDenyOom},
      {"decr", 2, &Commands::Decr, kDenyOom},
      {"incrby", 3, &Commands::IncrBy, kDenyOom},
      {"decrby", 3, &Commands::DecrBy, kDenyOom},
      {"mget", -2, &Commands::MGet},
      {"mset", -3, &Commands::MSet, kDenyOom},
      {"ttl", 2, &Commands::Ttl},
      {"pttl", 2, &Commands::Pttl},
      {"expire", 3, &Commands::Expire},
      {"pexpire", 3, &Commands::PExpire},
      {"persist", 2, &Commands::Persist},
      {"dbsize", 1, &Commands::DbSize},
      {"flushall", -1, &Commands::FlushAll},
      {"flushdb", -1, &Commands::FlushAll},
      {"info", -1, &Commands::Info},
      {"quit", -1, &Commands::Quit, kNoAuth},
      {"select", 2, &Commands::Select},
      {"command", -1, &Commands::Command},
      {"config", -2, &Commands::Config},
      {"client", -2, &Commands::Client},
      {"debug", -2, &Commands::Debug, kDenyOom},
      {"auth", -2, &Commands::Auth, kNoAuth},
  };
  static const auto* kByName = [] {
    auto* m = new std::unordered_map<std::string_view, const Spec*>();
    for (const Spec& s : kSpecs) (*m)[s.name] = &s;
    return m;
  }();
  if (name.size() > 16) return nullptr;
  char buf[16];
  for (size_t i = 0; i < name.size(); ++i) {
    char ch = name[i];
    buf[i] = (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
  }
  auto it = kByName->find(std::string_view(buf, name.size()));
  return it == kByName->end() ? nullptr : it->second;
}

bool Commands::Execute(std::span<const std::string_view> args, int64_t now_ms, std::string* out,
                       Session* session) {
  ++stats_.commands;
  const Spec* spec = Lookup(args[0]);
  if (spec == nullptr) {
    std::string msg = "ERR unknown command '" + std::string(args[0].substr(0, 128)) +
                      "', with args beginning with: ";
    for (size_t i = 1; i < args.size() && msg.size() < 256; ++i) {
      msg += "'" + std::string(args[i].substr(0, 128)) + "' ";
    }
    AppendError(out, msg);
    return false;
  }
  int argc = static_cast<int>(args.size());
  if ((spec->arity > 0 && argc != spec->arity) || (spec->arity < 0 && argc < -spec->arity)) {
    AppendError(out, "ERR wrong number of arguments for '" + std::string(spec->name) + "' command");
    return false;
  }
  if (options_.users && !(spec->flags & kNoAuth) &&
      (session == nullptr || !session->authenticated)) {
    AppendError(out, "NOAUTH Authentication required.");
    return false;
  }
  if ((spec->flags & kDenyOom) && options_.maxmemory > 0 &&
      store_->stats().used_bytes > options_.maxmemory) {
    AppendError(out, kErrOom);
    return false;
  }
  Call call{args, now_ms, out, session};
  (this->*spec->fn)(call);
  return call.close;
}

void Commands::Ping(Call& c) {
  if (c.argc() > 2) return AppendError(c.out, "ERR wrong number of arguments for 'ping' command");
  if (c.argc() == 2) return AppendBulk(c.out, c.args[1]);
  AppendSimple(c.out, "PONG");
}

void Commands::Echo(Call& c) { AppendBulk(c.out, c.args[1]); }

void Commands::Get(Call& c) {
  ValueRef v;
  if (store_->Get(c.args[1], c.now_ms, &v)) {
    ++stats_.keyspace_hits;
    AppendBulk(c.out, v.data);
  } else {
    ++stats_.keyspace_misses;
    AppendNullBulk(c.out);
  }
}

// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]
void Commands::Set(Call& c) {
  bool nx = false, xx = false, get = false, keep_ttl = false, has_expire = false;
  int64_t expire_ms = 0;
  for (size_t i = 3; i < c.argc(); ++i) {
    std::string opt = Lower(c.args[i]);
    if (opt == "nx" && !xx) {
      nx = true;
    } else if (opt == "xx" && !nx) {
      xx = true;
    } else if (opt == "get") {
      get = true;
    } else if (opt == "keepttl" && !has_expire) {
      keep_ttl = true;
    } else if ((opt == "ex" || opt == "px" || opt == "exat" || opt == "pxat") && !keep_ttl &&
               !has_expire && i + 1 < c.argc()) {
      int64_t v;
      if (!ParseInt64(c.args[++i], &v)) return AppendError(c.out, kErrNotInt);
      const bool secs = opt == "ex" || opt == "exat", relative = opt == "ex" || opt == "px";
      int64_t base = relative ? c.now_ms : 0;
      if (v <= 0 || (secs && v > INT64_MAX / 1000) || (secs ? v * 1000 : v) > INT64_MAX - base) {
        return AppendError(c.out, "ERR invalid expire time in 'set' command");
      }
      expire_ms = base + (secs ? v * 1000 : v);
      has_expire = true;
    } else {
      return AppendError(c.out, kErrSyntax);
    }
  }
  std::string_view key = c.args[1];
  bool exists = false;
  std::string old;
  if (nx || xx || get) {
    ValueRef v;
    exists = store_->Get(key, c.now_ms, &v);
    if (exists && get) old.assign(v.data);
  }
  auto reply = [&] {
    if (!get) return AppendSimple(c.out, "OK");
    exists ? AppendBulk(c.out, old) : AppendNullBulk(c.out);
  };
  if ((nx && exists) || (xx && !exists)) {
    return get ? reply() : AppendNullBulk(c.out);
  }
  if (has_expire && expire_ms <= c.now_ms) {  // EXAT/PXAT in the past: set, expired at once
    store_->Delete(key, c.now_ms);
    return reply();
  }
  if (!store_->Set(key, c.args[2], expire_ms, c.now_ms, keep_ttl).ok()) {
    return AppendError(c.out, kErrOom);
  }
  reply();
}

void Commands::Del(Call& c) {
  int64_t n = 0;
  for (size_t i = 1; i < c.argc(); ++i) n += store_->Delete(c.args[i], c.now_ms);
  AppendInteger(c.out, n);
}

void Commands::Exists(Call& c) {
  int64_t n = 0;
  for (size_t i = 1; i < c.argc(); ++i) n += store_->Exists(c.args[i], c.now_ms);
  AppendInteger(c.out, n);
}

void Commands::IncrementBy(Call& c, int64_t delta) {
  ValueRef v;
  int64_t cur = 0;
  if (store_->Get(c.args[1], c.now_ms, &v) && !ParseInt64(v.data, &cur)) {
    return AppendError(c.out, kErrNotInt);
  }
  if ((delta > 0 && cur > INT64_MAX - delta) || (delta < 0 && cur < INT64_MIN - delta)) {
    return AppendError(c.out, kErrOverflow);
  }
  char buf[24];
  if (!store_->Set(c.args[1], FormatInt(cur + delta, buf), 0, c.now_ms, /*keep_ttl=*/true).ok()) {
    return AppendError(c.out, kErrOom);
  }
  AppendInteger(c.out, cur + delta);
}

void Commands::Incr(Call& c) { IncrementBy(c, 1); }
void Commands::Decr(Call& c) { IncrementBy(c, -1); }

void Commands::IncrBy(Call& c) {
  int64_t d;
  if (!ParseInt64(c.args[2], &d)) return AppendError(c.out, kErrNotInt);
  IncrementBy(c, d);
}

void Commands::DecrBy(Call& c) {
  int64_t d;
  if (!ParseInt64(c.args[2], &d)) return AppendError(c.out, kErrNotInt);
  if (d == INT64_MIN) return AppendError(c.out, "ERR decrement would overflow");
  IncrementBy(c, -d);
}

void Commands::MGet(Call& c) {
  AppendArrayHeader(c.out, c.argc() - 1);
  for (size_t i = 1; i < c.argc(); ++i) {
    ValueRef v;
    if (store_->Get(c.args[i], c.now_ms, &v)) {
      ++stats_.keyspace_hits;
      AppendBulk(c.out, v.data);
    } else {
      ++stats_.keyspace_misses;
      AppendNullBulk(c.out);
    }
  }
}

void Commands::MSet(Call& c) {
  if (c.argc() % 2 != 1)
    return AppendError(c.out, "ERR wrong number of arguments for 'mset' command");
  std::vector<std::pair<std::string_view, std::string_view>> pairs;
  pairs.reserve(c.argc() / 2);
  for (size_t i = 1; i < c.argc(); i += 2) pairs.emplace_back(c.args[i], c.args[i + 1]);
  if (!store_->SetMany(pairs).ok()) return AppendError(c.out, kErrOom);
  AppendSimple(c.out, "OK");
}

void Commands::TtlGeneric(Call& c, bool ms) {
  ValueRef v;
  if (!store_->Get(c.args[1], c.now_ms, &v)) return AppendInteger(c.out, -2);
  if (v.expire_ms == 0) return AppendInteger(c.out, -1);
  int64_t left = v.expire_ms - c.now_ms;
  AppendInteger(c.out, ms ? left : (left + 500) / 1000);
}
void Commands::Ttl(Call& c) { TtlGeneric(c, false); }
void Commands::Pttl(Call& c) { TtlGeneric(c, true); }

void Commands::ExpireGeneric(Call& c, int64_t unit_ms) {
  int64_t v;
  if (!ParseInt64(c.args[2], &v)) return AppendError(c.out, kErrNotInt);
  if (v > INT64_MAX / unit_ms || v < INT64_MIN / unit_ms ||
      (v > 0 && v * unit_ms > INT64_MAX - c.now_ms)) {
    return AppendError(c.out, "ERR invalid expire time in '" + Lower(c.args[0]) + "' command");
  }
  if (v <= 0) return AppendInteger(c.out, store_->Delete(c.args[1], c.now_ms) ? 1 : 0);
  AppendInteger(c.out, store_->SetExpire(c.args[1], c.now_ms + v * unit_ms, c.now_ms) ? 1 : 0);
}
void Commands::Expire(Call& c) { ExpireGeneric(c, 1000); }
void Commands::PExpire(Call& c) { ExpireGeneric(c, 1); }

void Commands::Persist(Call& c) {
  ValueRef v;
  if (!store_->Get(c.args[1], c.now_ms, &v) || v.expire_ms == 0) return AppendInteger(c.out, 0);
  AppendInteger(c.out, store_->SetExpire(c.args[1], 0, c.now_ms) ? 1 : 0);
}

void Commands::DbSize(Call& c) { AppendInteger(c.out, static_cast<int64_t>(store_->size())); }

void Commands::FlushAll(Call& c) {
  if (c.argc() > 2 || (c.argc() == 2 && !EqualsIgnoreCase(c.args[1], "sync") &&
                       !EqualsIgnoreCase(c.args[1], "async"))) {
    return AppendError(c.out, kErrSyntax);
  }
  store_->Clear();
  AppendSimple(c.out, "OK");
}

void Commands::Quit(Call& c) {
  AppendSimple(c.out, "OK");
  c.close = true;
}

void Commands::Select(Call& c) {
  int64_t db;
  if (!ParseInt64(c.args[1], &db)) return AppendError(c.out, kErrNotInt);
  if (db != 0) return AppendError(c.out, "ERR DB index is out of range");
  AppendSimple(c.out, "OK");
}

// Enough for clients that probe on connect (redis-cli sends COMMAND DOCS).
void Commands::Command(Call& c) {
  if (c.argc() >= 2 && EqualsIgnoreCase(c.args[1], "count")) return AppendInteger(c.out, 29);
  AppendArrayHeader(c.out, 0);
}

void Commands::Config(Call& c) {
  std::string sub = Lower(c.args[1]);
  if (sub == "resetstat" && c.argc() == 2) {
    stats_ = {};
    return AppendSimple(c.out, "OK");
  }
  if (sub == "set") return AppendError(c.out, "ERR CONFIG SET is not supported by spare-kv");
  if (sub != "get") {
    return AppendError(c.out, "ERR unknown subcommand '" + std::string(c.args[1].substr(0, 64)) +
                                  "'. Try CONFIG HELP.");
  }
  if (c.argc() < 3)
    return AppendError(c.out, "ERR wrong number of arguments for 'config|get' command");
  // redis-benchmark asks for save and appendonly before it starts.
  const std::pair<std::string, std::string> params[] = {
      {"save", ""},
      {"appendonly", "no"},
      {"databases", "1"},
      {"port", std::to_string(options_.port)},
      {"bind", options_.bind},
      {"maxmemory", std::to_string(options_.maxmemory > 0 ? options_.maxmemory
                                                          : store_->stats().capacity_bytes)},
      {"maxmemory-policy", "noeviction"},
      {"maxclients", std::to_string(options_.max_clients)},
      {"proto-max-bulk-len", std::to_string(options_.max_bulk)},
      {"hz", std::to_string(options_.hz)},
      {"client-query-buffer-limit", std::to_string(options_.max_query_buffer)},
  };
  std::vector<const std::pair<std::string, std::string>*> hits;
  for (const auto& p : params) {
    for (size_t i = 2; i < c.argc(); ++i) {
      if (fnmatch(Lower(c.args[i]).c_str(), p.first.c_str(), 0) == 0) {
        hits.push_back(&p);
        break;
      }
    }
  }
  AppendArrayHeader(c.out, hits.size() * 2);
  for (const auto* p : hits) {
    AppendBulk(c.out, p->first);
    AppendBulk(c.out, p->second);
  }
}

void Commands::Client(Call& c) {
  std::string sub = Lower(c.args[1]);
  if (sub == "setname" || sub == "setinfo") return AppendSimple(c.out, "OK");
  if (sub == "getname") return AppendNullBulk(c.out);
  AppendError(c.out, "ERR unknown subcommand '" + std::string(c.args[1].substr(0, 64)) +
                         "'. Try CLIENT HELP.");
}

void Commands::Debug(Call& c) {
  if (EqualsIgnoreCase(c.args[1], "populate")) return Populate(c);
  AppendError(c.out, "ERR unknown subcommand '" + std::string(c.args[1].substr(0, 64)) +
                         "'. spare-kv supports DEBUG POPULATE count [prefix] [size].");
}

// AUTH [username] password: as Redis 7 (the default user is `default`).
void Commands::Auth(Call& c) {
  if (c.argc() > 3) return AppendError(c.out, kErrSyntax);
  const std::string_view user = c.argc() == 3 ? c.args[1] : "default";
  const std::string_view pass = c.args[c.argc() - 1];
  bool ok;
  if (!options_.users) {  // the default user is on and nopass
    if (c.argc() == 2) {
      return AppendError(c.out,
                         "ERR AUTH <password> called without any password configured for the "
                         "default user. Are you sure your configuration is correct?");
    }
    ok = user == "default";
  } else {
    ok = options_.users->Check(user, pass);
  }
  if (!ok) {
    return AppendError(c.out, "WRONGPASS invalid username-password pair or user is disabled.");
  }
  if (c.session != nullptr) {
    c.session->authenticated = true;
    c.session->user.assign(user);
  }
  AppendSimple(c.out, "OK");
}

// DEBUG POPULATE count [prefix] [size]: keys prefix:0.. with values
// "value:N" (or size bytes: "value:N" then zeros); existing keys are kept.
void Commands::Populate(Call& c) {
  if (c.argc() < 3 || c.argc() > 5) {
    return AppendError(c.out, "ERR wrong number of arguments for 'debug|populate' command");
  }
  int64_t count, size = 0;
  if (!ParseInt64(c.args[2], &count) || count < 0 ||
      (c.argc() == 5 && (!ParseInt64(c.args[4], &size) || size < 0))) {
    return AppendError(c.out, "ERR value is out of range, must be positive");
  }
  if (static_cast<uint64_t>(size) > options_.max_bulk) {
    return AppendError(c.out, "ERR value size is larger than proto-max-bulk-len");
  }
  std::string prefix = c.argc() >= 4 ? std::string(c.args[3]) : "key";
  if (!store_->Reserve(static_cast<size_t>(count)).ok()) return AppendError(c.out, kErrOom);
  std::string key = prefix + ":", value;
  const size_t key_base = key.size();
  size_t keys_since = 0, bytes_since = 0;
  size_t table_bytes = store_->stats().table_slots * sizeof(uint64_t);
  for (int64_t j = 0; j < count; ++j) {
    if (checkpoint_ && std::min(keys_since * 4096, table_bytes) + bytes_since >= kCheckpointBytes) {
      if (!checkpoint_()) return AppendError(c.out, "ERR commit failed during DEBUG POPULATE");
      keys_since = bytes_since = 0;
      table_bytes = store_->stats().table_slots * sizeof(uint64_t);
    }
    char buf[24];
    key.resize(key_base);
    key.append(FormatInt(j, buf));
    if (store_->Exists(key, c.now_ms)) continue;
    value = "value:";
    value.append(FormatInt(j, buf));
    if (size > 0) value.resize(static_cast<size_t>(size), '\0');
    if (!store_->Set(key, value, 0, c.now_ms).ok()) return AppendError(c.out, kErrOom);
    ++keys_since;
    bytes_since += key.size() + value.size() + 64;
  }
  AppendSimple(c.out, "OK");
}

}  // namespace kv
