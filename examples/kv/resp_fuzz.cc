// resp_fuzz.cc — libFuzzer target for RequestParser (build: see CMakeLists.txt).
//
// Checks, for any input: the parser never reads outside the buffer, never
// consumes more than it was given, makes progress on every kCommand/kError,
// and gives the same commands whether the input arrives at once or in
// pieces (the piece size comes from the first input byte).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "resp.h"

namespace {

struct Outcome {
  std::vector<std::vector<std::string>> commands;
  std::string error;
  bool operator==(const Outcome&) const = default;
};

Outcome Run(std::string_view input, size_t chunk) {
  kv::RespLimits limits;
  limits.max_bulk = 1 << 16;
  limits.max_multibulk = 1 << 12;
  limits.max_inline = 1 << 10;
  kv::RequestParser parser(limits);
  Outcome out;
  std::string buf;
  size_t fed = 0;
  while (true) {
    kv::ParseResult r = parser.Parse(buf);
    if (r.state == kv::ParseState::kNeedMore) {
      if (r.consumed != 0) std::abort();
      if (fed == input.size()) return out;
      size_t n = std::min(chunk, input.size() - fed);
      buf.append(input.substr(fed, n));
      fed += n;
      continue;
    }
    if (r.consumed > buf.size()) std::abort();
    if (r.state == kv::ParseState::kError) {
      if (r.error.empty()) std::abort();
      out.error = std::string(r.error);
      if (r.fatal) return out;
    } else {
      std::vector<std::string> args;
      for (std::string_view a : parser.args()) args.emplace_back(a);
      if (!args.empty()) out.commands.push_back(std::move(args));
    }
    if (r.consumed == 0) std::abort();  // no progress: would loop forever
    buf.erase(0, r.consumed);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = 1 + data[0] % 17;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (!(Run(input, input.size() + 1) == Run(input, chunk))) std::abort();
  return 0;
}
