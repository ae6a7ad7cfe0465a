// conf_text.cc — line splitting, numbers with units, blob codec.
#include "conf_text.h"

#include <charconv>
#include <cstring>

namespace kv {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

spare::Result<std::vector<std::string>> SplitConfigLine(std::string_view line) {
  std::vector<std::string> args;
  size_t i = 0;
  while (true) {
    while (i < line.size() && IsBlank(line[i])) ++i;
    if (i == line.size()) break;
    if (args.empty() && line[i] == '#') break;
    std::string arg;
    const char quote = line[i];
    if (quote == '"' || quote == '\'') {
      ++i;
      bool closed = false;
      while (i < line.size()) {
        char c = line[i++];
        if (c == quote) {
          closed = true;
          break;
        }
        if (quote == '"' && c == '\\' && i < line.size()) {
          char e = line[i++];
          arg.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e);
          continue;
        }
        arg.push_back(c);
      }
      if (!closed) return spare::Status(spare::Code::kInvalidArgument, "unbalanced quotes");
      if (i < line.size() && !IsBlank(line[i])) {
        return spare::Status(spare::Code::kInvalidArgument,
                             "closing quote must be followed by a space");
      }
    } else {
      while (i < line.size() && !IsBlank(line[i])) arg.push_back(line[i++]);
    }
    args.push_back(std::move(arg));
  }
  return args;
}

spare::Result<std::vector<ConfigLine>> SplitConfigText(std::string_view text,
                                                       std::string_view file) {
  std::vector<ConfigLine> out;
  size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    auto args = SplitConfigLine(line);
    if (!args.ok()) return LineError(file, line_no, args.status().message());
    if (!args->empty()) out.push_back({line_no, std::move(args).value()});
  }
  return out;
}

bool ParseBoundedInt(std::string_view s, uint64_t min, uint64_t max, uint64_t* out) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size() || v < min || v > max) {
    return false;
  }
  *out = v;
  return true;
}

bool ParseBytes(std::string_view s, uint64_t max, uint64_t* out) {
  std::string lower = ToLower(s);
  size_t digits = 0;
  while (digits < lower.size() && lower[digits] >= '0' && lower[digits] <= '9') ++digits;
  std::string_view unit = std::string_view(lower).substr(digits);
  uint64_t mul = 1;
  if (unit == "k")
    mul = 1000;
  else if (unit == "kb")
    mul = 1024;
  else if (unit == "m")
    mul = 1000 * 1000;
  else if (unit == "mb")
    mul = 1024 * 1024;
  else if (unit == "g")
    mul = 1000 * 1000 * 1000;
  else if (unit == "gb")
    mul = uint64_t{1} << 30;
  else if (!unit.empty())
    return false;
  uint64_t v;
  if (!ParseBoundedInt(std::string_view(lower).substr(0, digits), 0, UINT64_MAX, &v)) return false;
  if (v > max / mul) return false;
  *out = v * mul;
  return true;
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

spare::Status LineError(std::string_view file, size_t line, std::string_view message) {
  return spare::Status(
      spare::Code::kInvalidArgument,
      std::string(file) + ":" + std::to_string(line) + ": " + std::string(message));
}

void BlobWriter::U64(uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out_.append(b, 8);
}

void BlobWriter::Str(std::string_view s) {
  U64(s.size());
  out_.append(s);
}

uint64_t BlobReader::U64() {
  if (!ok_ || in_.size() < 8) {
    ok_ = false;
    return 0;
  }
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(in_[i])} << (8 * i);
  in_.remove_prefix(8);
  return v;
}

std::string BlobReader::Str() {
  uint64_t n = U64();
  if (!ok_ || n > in_.size()) {
    ok_ = false;
    return {};
  }
  std::string s(in_.substr(0, n));
  in_.remove_prefix(n);
  return s;
}

}  // namespace kv
