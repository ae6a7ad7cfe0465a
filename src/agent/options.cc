#include "agent/options.h"

#include <arpa/inet.h>
#include <toml++/toml.h>

#include <CLI/Error.hpp>
#include <CLI/Validators.hpp>
#include <cctype>
#include <charconv>

#include "common/files.h"
#include "epoch/staging.h"

namespace spare::agent {

static_assert(kMinSlotSize == epoch::kMinSlotSize, "agent and staging disagree on slots");

namespace {

Status OutOfRange(std::string_view key, uint64_t v, std::string_view range) {
  return Status(Code::kInvalidArgument, std::string(key) + " = " + std::to_string(v) +
                                            " is out of range (" + std::string(range) + ")");
}

// An integer or (for sizes) a byte string, as uint64.
Result<uint64_t> TomlUint(const std::string& key, const toml::node& node, bool bytes) {
  if (auto i = node.value_exact<int64_t>()) {
    if (*i < 0) return Status(Code::kInvalidArgument, key + " must not be negative");
    return static_cast<uint64_t>(*i);
  }
  if (bytes) {
    if (auto s = node.value_exact<std::string>()) {
      auto r = ParseBytes(*s);
      if (!r.ok()) return r.status().With(key);
      return r;
    }
    return Status(Code::kInvalidArgument,
                  key + " must be a byte count (e.g. 16777216 or \"16MiB\")");
  }
  return Status(Code::kInvalidArgument, key + " must be an integer");
}

Status ApplyKey(const std::string& key, const toml::node& node, AgentOptions* o) {
  if (key == "slot_size") {
    SPARE_ASSIGN_OR_RETURN(uint64_t v, TomlUint(key, node, true));
    SPARE_RETURN_IF_ERROR(CheckSlotSize(key, v));
    o->slot_size = v;
    return Status::Ok();
  }
  if (key == "metrics_host") {
    auto text = node.value_exact<std::string>();
    if (!text)
      return Status(Code::kInvalidArgument, key + " must be a string (e.g. \"127.0.0.1\")");
    SPARE_ASSIGN_OR_RETURN(o->metrics_host, CheckMetricsHost(key, *text));
    return Status::Ok();
  }
  SPARE_ASSIGN_OR_RETURN(uint64_t v, TomlUint(key, node, false));
  if (key == "slot_count") {
    SPARE_RETURN_IF_ERROR(CheckSlotCount(key, v));
    o->slot_count = static_cast<uint32_t>(v);
  } else if (key == "max_restarts") {
    SPARE_RETURN_IF_ERROR(CheckMaxRestarts(key, v));
    o->max_restarts = static_cast<uint32_t>(v);
  } else if (key == "restart_window_s") {
    SPARE_RETURN_IF_ERROR(CheckRestartWindowS(key, v));
    o->restart_window_s = v;
  } else if (key == "metrics_port") {
    if (v > 65535) return OutOfRange(key, v, "0 (off) to 65535");
    o->metrics_port = static_cast<uint16_t>(v);
  } else {
    return Status(Code::kInvalidArgument,
                  "unknown key \"" + key +
                      "\" (known: slot_count, slot_size, max_restarts, restart_window_s, "
                      "metrics_port, metrics_host)");
  }
  return Status::Ok();
}

}  // namespace

Status CheckSlotCount(std::string_view key, uint64_t v) {
  if (v < 1 || v > kMaxSlotCount) return OutOfRange(key, v, "1 to 1024");
  return Status::Ok();
}

Status CheckSlotSize(std::string_view key, uint64_t v) {
  if (v < kMinSlotSize || v > kMaxSlotSize) return OutOfRange(key, v, "128 KiB to 1 GiB");
  if (v % 4096 != 0)
    return Status(Code::kInvalidArgument,
                  std::string(key) + " = " + std::to_string(v) + " is not a multiple of 4096");
  return Status::Ok();
}

Status CheckMaxRestarts(std::string_view key, uint64_t v) {
  if (v > kMaxMaxRestarts) return OutOfRange(key, v, "0 to 1000000");
  return Status::Ok();
}

Status CheckRestartWindowS(std::string_view key, uint64_t v) {
  if (v < 1 || v > kMaxRestartWindowS) return OutOfRange(key, v, "1 s to 7 days");
  return Status::Ok();
}

Result<std::string> CheckMetricsHost(std::string_view key, std::string_view host) {
  std::string h(host);
  if (h == "localhost") return std::string("127.0.0.1");
  in_addr addr{};
  if (::inet_pton(AF_INET, h.c_str(), &addr) != 1)
    return Status(Code::kInvalidArgument,
                  std::string(key) + " \"" + h +
                      "\" is not an IPv4 address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)");
  return h;
}

Result<HostPort> ParseHostPort(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos)
    return Status(Code::kInvalidArgument,
                  "--metrics \"" + std::string(text) + "\" is not HOST:PORT (e.g. 127.0.0.1:9464)");
  HostPort out;
  SPARE_ASSIGN_OR_RETURN(out.host, CheckMetricsHost("--metrics host", text.substr(0, colon)));
  std::string_view port = text.substr(colon + 1);
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
  if (ec != std::errc() || end != port.data() + port.size() || n < 1 || n > 65535)
    return Status(Code::kInvalidArgument,
                  "--metrics port \"" + std::string(port) + "\" must be 1 to 65535");
  out.port = static_cast<uint16_t>(n);
  return out;
}

Result<uint64_t> ParseBytes(std::string_view text) {
  // CLI11's size parser, the one `spare run --slot-size` uses, so the
  // config file and the flags read sizes alike. It throws; we do not.
  static const CLI::AsSizeValue kSize(/*kb_is_1000=*/false);
  const std::string shown = "\"" + std::string(text) + "\"";
  // It reads a bare unit ("MiB") as one of it; a size must start with digits.
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])))
    return Status(Code::kInvalidArgument, shown + " is not a byte count (e.g. 16777216 or 16MiB)");
  std::string value(text);
  std::string error;
  try {
    error = kSize(value);
  } catch (const CLI::Error& e) {
    error = e.what();
  }
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (error.empty() && (ec != std::errc() || end != value.data() + value.size()))
    error = "not a whole number of bytes";
  if (!error.empty())
    return Status(Code::kInvalidArgument,
                  shown + " is not a byte count (" + error + "; use bytes, KiB, MiB or GiB)");
  return n;
}

Status ParseAgentConfig(std::string_view text, const std::string& path, AgentOptions* options) {
  toml::table table;
  try {
    table = toml::parse(text, std::string_view(path));
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return Status(Code::kInvalidArgument, "config " + path + " line " + std::to_string(where.line) +
                                              ": " + std::string(e.description()));
  } catch (const std::exception& e) {
    return Status(Code::kInvalidArgument, "config " + path + ": " + e.what());
  }
  AgentOptions parsed = *options;  // a bad key changes nothing
  for (auto&& [key, node] : table) {
    Status st = ApplyKey(std::string(key.str()), node, &parsed);
    if (!st.ok()) return st.With("config " + path);
  }
  *options = std::move(parsed);
  return Status::Ok();
}

Status LoadAgentConfig(const std::string& path, AgentOptions* options) {
  auto text = ReadFile(path);
  if (!text.ok()) return Status(Code::kInvalidArgument, "config " + path + ": " + text.status().ToString());
  if (!*text) return Status(Code::kInvalidArgument, "config " + path + ": no such file");
  return ParseAgentConfig(**text, path, options);
}

}  // namespace spare::agent
