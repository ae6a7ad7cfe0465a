// conf_text.h — the pieces shared by spare-kv's file parsers (config.h,
// users.h) and their checkpoint blobs.
//
// Lines: one directive per line, arguments separated by blanks; `#` starts
// a comment at the start of a line (after blanks); an argument may be
// double-quoted ("a b", with \" \\ \n \t escapes) or single-quoted
// ('a b', no escapes), like redis.conf.
//
// Blobs: the parsed form of a file as saved in a configuration checkpoint:
// fixed-width little-endian integers and length-prefixed strings. A Reader
// never reads past its input; a short or garbled blob makes ok() false.
//
// Threading: plain values, no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace kv {

// Splits one line into arguments. Empty for a blank or comment line.
// kInvalidArgument ("unbalanced quotes", "closing quote must be followed
// by a space") for a malformed line; the caller adds file and line.
spare::Result<std::vector<std::string>> SplitConfigLine(std::string_view line);

// One directive: its 1-based line number and its arguments (never empty).
struct ConfigLine {
  size_t line_no;
  std::vector<std::string> args;
};
// Every directive of `text`, blank and comment lines skipped; the first
// malformed line is a LineError ("FILE:LINE: ...").
spare::Result<std::vector<ConfigLine>> SplitConfigText(std::string_view text,
                                                       std::string_view file);

// Decimal integer in [min, max], nothing else.
bool ParseBoundedInt(std::string_view s, uint64_t min, uint64_t max, uint64_t* out);
// A byte count like redis.conf: 100, 1k = 1000, 1kb = 1024, m/mb, g/gb
// (case-insensitive). False if malformed or over max.
bool ParseBytes(std::string_view s, uint64_t max, uint64_t* out);

std::string ToLower(std::string_view s);

// "FILE:LINE: message" as a kInvalidArgument.
spare::Status LineError(std::string_view file, size_t line, std::string_view message);

class BlobWriter {
 public:
  void U64(uint64_t v);
  void Str(std::string_view s);
  const std::string& data() const { return out_; }

 private:
  std::string out_;
};

class BlobReader {
 public:
  explicit BlobReader(std::string_view in) : in_(in) {}
  uint64_t U64();     // 0 once !ok()
  std::string Str();  // empty once !ok()
  bool ok() const { return ok_; }
  bool at_end() const { return in_.empty(); }

 private:
  std::string_view in_;
  bool ok_ = true;
};

}  // namespace kv
