// resp.h — the Redis protocol (RESP2) as spare-kv speaks it.
//
// RequestParser reads client requests incrementally: RESP arrays of bulk
// strings ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") as every client library sends,
// and inline commands ("PING\r\n", with "quoted \x41rgs") as redis-cli,
// redis-benchmark and telnet may send. No declared length is trusted: each
// is checked against RespLimits before anything is reserved or read.
//
// Errors follow Redis ("ERR Protocol error: invalid bulk length"). A bad
// inline line can be skipped (the next line is a fresh request), so those
// errors are not fatal; anything wrong inside a multibulk request leaves no
// way to find the next request, so the server replies and closes, like
// Redis. A request that fails to parse is never executed.
//
// Threading: a parser belongs to one connection; no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kv {

struct RespLimits {
  size_t max_multibulk = 1024 * 1024;   // arguments per request
  size_t max_bulk = 512 * 1024 * 1024;  // bytes per argument (Redis proto-max-bulk-len)
  size_t max_inline = 64 * 1024;        // bytes of an inline request line
};

enum class ParseState {
  kCommand,   // a request is complete: args(), consumed
  kNeedMore,  // the buffer holds only part of a request; nothing consumed
  kError,     // protocol error: error, fatal, consumed (when not fatal)
};

struct ParseResult {
  ParseState state = ParseState::kNeedMore;
  size_t consumed = 0;     // bytes of the buffer this request (or skipped line) used
  std::string_view error;  // kError: reply text without '-', e.g. "ERR Protocol error: ..."
  bool fatal = false;      // kError: reply, then close the connection
};

class RequestParser {
 public:
  explicit RequestParser(RespLimits limits = {}) : limits_(limits) {}

  // Parses the request at the start of `buf`. After kCommand or a non-fatal
  // kError the caller drops `consumed` bytes and calls again with the rest.
  // After kNeedMore the caller may only append to the buffer (it may move)
  // and calls again with the whole of it; the parser resumes where it was.
  // kCommand with empty args() is an empty request ("*0", a blank line):
  // skip it.
  ParseResult Parse(std::string_view buf);

  // The arguments of the request just parsed: views into the buffer given
  // to Parse (or into the parser, for inline requests with escapes). Valid
  // until the next call to Parse or Reset.
  const std::vector<std::string_view>& args() const { return args_; }

  // Forgets a partly parsed request.
  void Reset();

 private:
  ParseResult ParseInline(std::string_view buf);
  ParseResult ParseMultibulk(std::string_view buf);
  ParseResult Fail(std::string_view error, bool fatal, size_t consumed = 0);
  ParseResult Complete(std::string_view buf, size_t consumed);

  RespLimits limits_;
  bool in_multibulk_ = false;
  size_t pos_ = 0;                                // next byte to parse within the pending request
  int64_t remaining_ = 0;                         // bulk strings still to read
  std::vector<std::pair<size_t, size_t>> spans_;  // (offset, length) per argument
  std::vector<std::string_view> args_;
  std::string inline_buf_;  // unescaped inline arguments
};

// Parses a decimal int64 exactly like Redis' string2ll: optional '-', no
// '+', no spaces, no leading zeros, no overflow.
bool ParseInt64(std::string_view s, int64_t* out);

// Reply encoders: append one RESP2 value to *out. Simple strings and errors
// must be one line; CR and LF in them are replaced by spaces.
void AppendSimple(std::string* out, std::string_view s);  // +OK
void AppendError(std::string* out, std::string_view s);   // -ERR ...
void AppendInteger(std::string* out, int64_t v);          // :42
void AppendBulk(std::string* out, std::string_view s);    // $3 foo
void AppendNullBulk(std::string* out);                    // $-1
void AppendArrayHeader(std::string* out, size_t n);       // *n, then n values
void AppendNullArray(std::string* out);                   // *-1

}  // namespace kv
