// config.cc — the redis.conf-style configuration file.
#include "config.h"

#include <vector>

#include "conf_text.h"

namespace kv {
namespace {

constexpr uint64_t kConfigBlobMagic = 0x3143464e4f43564bull;  // "KVCONFC1"
constexpr uint64_t kMb = uint64_t{1} << 20;

struct IntDirective {
  std::string_view name;
  bool bytes;  // units allowed
  uint64_t min, max;
  std::optional<uint64_t> KvConfig::*field;
};

constexpr IntDirective kIntDirectives[] = {
    {"maxclients", false, 1, 1000000, &KvConfig::maxclients},
    {"hz", false, 1, 500, &KvConfig::hz},
    {"maxmemory", true, 0, UINT64_MAX, &KvConfig::maxmemory},
    {"proto-max-bulk-len", true, 1, 512 * kMb, &KvConfig::proto_max_bulk_len},
    {"client-query-buffer-limit", true, kMb, 4096 * kMb, &KvConfig::client_query_buffer_limit},
};

std::string Range(const IntDirective& d) {
  if (!d.bytes) return "an integer from " + std::to_string(d.min) + " to " + std::to_string(d.max);
  if (d.max == UINT64_MAX) return "a byte count (100, 1kb, 64mb, 2gb; 0 = no limit)";
  return "a byte count from " + std::to_string(d.min) + " to " + std::to_string(d.max) +
         " (units k kb m mb g gb)";
}

}  // namespace

spare::Result<KvConfig> ParseConfig(std::string_view text, std::string_view file) {
  KvConfig config;
  SPARE_ASSIGN_OR_RETURN(std::vector<ConfigLine> lines, SplitConfigText(text, file));
  for (const ConfigLine& directive : lines) {
    const size_t line_no = directive.line_no;
    const std::vector<std::string>* args = &directive.args;
    const std::string name = ToLower((*args)[0]);
    const std::string quoted = "'" + (*args)[0] + "'";
    if (args->size() != 2) {
      return LineError(
          file, line_no,
          quoted + " takes exactly one argument, got " + std::to_string(args->size() - 1));
    }
    const std::string& value = (*args)[1];
    ++config.directives;
    bool known = false;
    for (const IntDirective& d : kIntDirectives) {
      if (name != d.name) continue;
      known = true;
      uint64_t v;
      bool ok = d.bytes ? ParseBytes(value, d.max, &v) && v >= d.min
                        : ParseBoundedInt(value, d.min, d.max, &v);
      if (!ok)
        return LineError(file, line_no, quoted + " wants " + Range(d) + ", got '" + value + "'");
      config.*(d.field) = v;
    }
    if (known) continue;
    if (name == "maxmemory-policy") {
      if (ToLower(value) != "noeviction") {
        return LineError(
            file, line_no,
            quoted + " '" + value + "' is not supported: spare-kv only has noeviction");
      }
    } else if (name == "requirepass") {
      if (value.size() > 512) {
        return LineError(file, line_no, quoted + " password longer than 512 bytes");
      }
      config.requirepass = value;
    } else {
      return LineError(file, line_no,
                       "unknown directive " + quoted +
                           " (spare-kv knows maxclients, hz, maxmemory, maxmemory-policy, "
                           "proto-max-bulk-len, client-query-buffer-limit, requirepass)");
    }
  }
  return config;
}

std::string EncodeConfig(const KvConfig& config) {
  BlobWriter w;
  w.U64(kConfigBlobMagic);
  w.U64(config.directives);
  for (const IntDirective& d : kIntDirectives) {
    const auto& v = config.*(d.field);
    w.U64(v.has_value());
    w.U64(v.value_or(0));
  }
  w.U64(config.requirepass.has_value());
  w.Str(config.requirepass.value_or(""));
  return w.data();
}

spare::Result<KvConfig> DecodeConfig(std::string_view blob) {
  BlobReader r(blob);
  KvConfig config;
  bool ok = r.U64() == kConfigBlobMagic;
  config.directives = r.U64();
  for (const IntDirective& d : kIntDirectives) {
    bool has = r.U64() != 0;
    uint64_t v = r.U64();
    if (has) config.*(d.field) = v;
  }
  bool has_pass = r.U64() != 0;
  std::string pass = r.Str();
  if (has_pass) config.requirepass = std::move(pass);
  if (!ok || !r.ok() || !r.at_end()) {
    return spare::Status(spare::Code::kBadMessage, "not a spare-kv config checkpoint blob");
  }
  return config;
}

}  // namespace kv
