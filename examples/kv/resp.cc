// resp.cc — RESP request parser and reply encoders.
#include "resp.h"

#include <charconv>
#include <cstring>

namespace kv {
namespace {

constexpr std::string_view kErrMultibulkLen = "ERR Protocol error: invalid multibulk length";
constexpr std::string_view kErrBulkLen = "ERR Protocol error: invalid bulk length";
constexpr std::string_view kErrBigInline = "ERR Protocol error: too big inline request";
constexpr std::string_view kErrQuotes = "ERR Protocol error: unbalanced quotes in request";
constexpr std::string_view kErrCrlf = "ERR Protocol error: expected CRLF";

// "expected '$', got 'X'" for every possible byte, built once.
std::string_view ExpectedDollar(unsigned char c) {
  static std::string table[256];
  std::string& s = table[c];
  if (s.empty()) {
    s = "ERR Protocol error: expected '$', got '";
    s += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
    s += "'";
  }
  return s;
}

enum class LineResult { kOk, kNeedMore, kNotANumber, kBadCrlf };

// Finds the "\r\n" ending the length line that starts at buf[pos]; *end =
// index of '\r'. A length is at most 20 characters of '-' and digits, so
// anything else is refused at once rather than waited for: a client
// sending garbage gets its error without having to send a CR first.
LineResult FindNumberLine(std::string_view buf, size_t pos, size_t* end) {
  constexpr size_t kMaxDigits = 20;
  size_t i = pos;
  for (; i < buf.size() && buf[i] != '\r'; ++i) {
    char ch = buf[i];
    bool ok = (ch >= '0' && ch <= '9') || (ch == '-' && i == pos);
    if (!ok || i - pos >= kMaxDigits) return LineResult::kNotANumber;
  }
  if (i + 1 >= buf.size()) return LineResult::kNeedMore;
  *end = i;
  return buf[i + 1] == '\n' ? LineResult::kOk : LineResult::kBadCrlf;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Splits an inline line like Redis' sdssplitargs into *out (offsets into
// *storage). False on unbalanced quotes.
bool SplitInline(std::string_view line, std::string* storage,
                 std::vector<std::pair<size_t, size_t>>* out) {
  storage->clear();
  storage->reserve(line.size());
  size_t i = 0, n = line.size();
  while (true) {
    while (i < n && IsSpace(line[i])) ++i;
    if (i == n) return true;
    size_t start = storage->size();
    bool in_dq = false, in_sq = false, done = false;
    while (!done) {
      char c = i < n ? line[i] : '\0';
      if (in_dq) {
        if (i == n) return false;
        if (c == '\\' && i + 3 < n && line[i + 1] == 'x' && HexDigit(line[i + 2]) >= 0 &&
            HexDigit(line[i + 3]) >= 0) {
          storage->push_back(static_cast<char>(HexDigit(line[i + 2]) * 16 + HexDigit(line[i + 3])));
          i += 3;
        } else if (c == '\\' && i + 1 < n) {
          char e = line[++i];
          storage->push_back(e == 'n'   ? '\n'
                             : e == 'r' ? '\r'
                             : e == 't' ? '\t'
                             : e == 'b' ? '\b'
                             : e == 'a' ? '\a'
                                        : e);
        } else if (c == '"') {
          if (i + 1 < n && !IsSpace(line[i + 1])) return false;  // "foo"bar
          done = true;
        } else {
          storage->push_back(c);
        }
      } else if (in_sq) {
        if (i == n) return false;
        if (c == '\\' && i + 1 < n && line[i + 1] == '\'') {
          storage->push_back('\'');
          ++i;
        } else if (c == '\'') {
          if (i + 1 < n && !IsSpace(line[i + 1])) return false;
          done = true;
        } else {
          storage->push_back(c);
        }
      } else if (i == n || IsSpace(c)) {
        done = true;
        continue;  // leave i at the separator
      } else if (c == '"') {
        in_dq = true;
      } else if (c == '\'') {
        in_sq = true;
      } else {
        storage->push_back(c);
      }
      ++i;
    }
    out->emplace_back(start, storage->size() - start);
  }
}

}  // namespace

bool ParseInt64(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  if (s.size() == 1 && s[0] == '0') {
    *out = 0;
    return true;
  }
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size() || s[i] < '1' || s[i] > '9') return false;  // no "-", "+1", "01", "-0"
  int64_t v;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return false;
  *out = v;
  return true;
}

void RequestParser::Reset() {
  in_multibulk_ = false;
  pos_ = 0;
  remaining_ = 0;
  spans_.clear();
  args_.clear();
}

ParseResult RequestParser::Fail(std::string_view error, bool fatal, size_t consumed) {
  Reset();
  ParseResult r;
  r.state = ParseState::kError;
  r.error = error;
  r.fatal = fatal;
  r.consumed = consumed;
  return r;
}

ParseResult RequestParser::Complete(std::string_view buf, size_t consumed) {
  args_.clear();
  args_.reserve(spans_.size());
  for (auto [off, len] : spans_) args_.push_back(buf.substr(off, len));
  in_multibulk_ = false;
  pos_ = 0;
  remaining_ = 0;
  spans_.clear();
  ParseResult r;
  r.state = ParseState::kCommand;
  r.consumed = consumed;
  return r;
}

ParseResult RequestParser::Parse(std::string_view buf) {
  args_.clear();
  if (!in_multibulk_) {
    if (buf.empty()) return {};
    if (buf[0] != '*') return ParseInline(buf);
    size_t end;
    switch (FindNumberLine(buf, 1, &end)) {
      case LineResult::kNeedMore:
        return {};
      case LineResult::kNotANumber:
        return Fail(kErrMultibulkLen, true);
      case LineResult::kBadCrlf:
        return Fail(kErrCrlf, true);
      case LineResult::kOk:
        break;
    }
    int64_t count;
    if (!ParseInt64(buf.substr(1, end - 1), &count) ||
        count > static_cast<int64_t>(limits_.max_multibulk)) {
      return Fail(kErrMultibulkLen, true);
    }
    if (count <= 0) return Complete(buf, end + 2);  // "*0", "*-1": nothing to do
    in_multibulk_ = true;
    pos_ = end + 2;
    remaining_ = count;
    spans_.clear();
    // Never reserve what a client merely declares.
    spans_.reserve(count < 1024 ? count : 1024);
  }
  return ParseMultibulk(buf);
}

ParseResult RequestParser::ParseMultibulk(std::string_view buf) {
  while (remaining_ > 0) {
    if (pos_ >= buf.size()) return {};
    if (buf[pos_] != '$') return Fail(ExpectedDollar(static_cast<unsigned char>(buf[pos_])), true);
    size_t end;
    switch (FindNumberLine(buf, pos_ + 1, &end)) {
      case LineResult::kNeedMore:
        return {};
      case LineResult::kNotANumber:
        return Fail(kErrBulkLen, true);
      case LineResult::kBadCrlf:
        return Fail(kErrCrlf, true);
      case LineResult::kOk:
        break;
    }
    int64_t len;
    if (!ParseInt64(buf.substr(pos_ + 1, end - pos_ - 1), &len) || len < 0 ||
        static_cast<uint64_t>(len) > limits_.max_bulk) {
      return Fail(kErrBulkLen, true);
    }
    size_t data = end + 2;
    size_t need = data + static_cast<size_t>(len) + 2;
    if (buf.size() < need) return {};  // resume at this bulk header
    if (buf[need - 2] != '\r' || buf[need - 1] != '\n') return Fail(kErrCrlf, true);
    spans_.emplace_back(data, static_cast<size_t>(len));
    pos_ = need;
    --remaining_;
  }
  return Complete(buf, pos_);
}

ParseResult RequestParser::ParseInline(std::string_view buf) {
  size_t scan = buf.size() < limits_.max_inline ? buf.size() : limits_.max_inline;
  const void* nl = std::memchr(buf.data(), '\n', scan);
  if (nl == nullptr) {
    if (buf.size() > limits_.max_inline) return Fail(kErrBigInline, true);
    return {};
  }
  size_t end = static_cast<const char*>(nl) - buf.data();
  std::string_view line = buf.substr(0, end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  spans_.clear();
  // The line is complete, so a bad one can be skipped: not fatal.
  if (!SplitInline(line, &inline_buf_, &spans_)) return Fail(kErrQuotes, false, end + 1);
  if (spans_.size() > limits_.max_multibulk) return Fail(kErrMultibulkLen, false, end + 1);
  return Complete(inline_buf_, end + 1);
}

// --- Encoders ------------------------------------------------------------

namespace {
void AppendLine(std::string* out, char type, std::string_view s) {
  out->push_back(type);
  size_t at = out->size();
  out->append(s);
  for (size_t i = at; i < out->size(); ++i) {
    if ((*out)[i] == '\r' || (*out)[i] == '\n') (*out)[i] = ' ';
  }
  out->append("\r\n", 2);
}

void AppendNumberLine(std::string* out, char type, int64_t v) {
  char buf[24];
  buf[0] = type;
  auto [p, ec] = std::to_chars(buf + 1, buf + sizeof buf - 2, v);
  (void)ec;
  p[0] = '\r';
  p[1] = '\n';
  out->append(buf, p + 2 - buf);
}
}  // namespace

void AppendSimple(std::string* out, std::string_view s) { AppendLine(out, '+', s); }
void AppendError(std::string* out, std::string_view s) { AppendLine(out, '-', s); }
void AppendInteger(std::string* out, int64_t v) { AppendNumberLine(out, ':', v); }
void AppendBulk(std::string* out, std::string_view s) {
  AppendNumberLine(out, '$', static_cast<int64_t>(s.size()));
  out->append(s);
  out->append("\r\n", 2);
}
void AppendNullBulk(std::string* out) { out->append("$-1\r\n", 5); }
void AppendArrayHeader(std::string* out, size_t n) {
  AppendNumberLine(out, '*', static_cast<int64_t>(n));
}
void AppendNullArray(std::string* out) { out->append("*-1\r\n", 5); }

}  // namespace kv
