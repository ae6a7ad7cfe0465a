// fuzz_hot_wire: the agent ↔ standby wire (hot/wire.h), as the standby and
// the agent read it from the network. Each input is tried three ways:
//   - as a whole frame (Decode: magic, version, type, lengths, checksum),
//     then its body by the parser of its type, as the daemons do;
//   - as a stream header (FrameSize, what the liveness channel trusts
//     before it waits for a body);
//   - as a bare body for every parser (a valid checksum is rare by chance:
//     this reaches the body parsers with any bytes).
// A parser that accepts a body must accept its own re-encoding of it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "hot/wire.h"

namespace {

using spare::hot::Type;
using Bytes = std::span<const std::byte>;

template <typename Parse>
void RoundTrip(Parse parse, Bytes body) {
  auto m = parse(body);
  if (!m.ok()) return;
  auto again = parse(spare::hot::Body(*m));
  if (!again.ok()) std::abort();  // what it accepted, it must read back
}

void AllBodies(Bytes b) {
  using namespace spare::hot;
  RoundTrip(ParseHello, b);
  RoundTrip(ParseWelcome, b);
  RoundTrip(ParseError, b);
  RoundTrip(ParseReserve, b);
  RoundTrip(ParseReserved, b);
  RoundTrip(ParseCommit, b);
  RoundTrip(ParseHeartbeat, b);
  RoundTrip(ParseFenced, b);
  RoundTrip(ParseCopy, b);
  RoundTrip(ParseCopyKeys, b);
  RoundTrip(ParseCopyDone, b);
  RoundTrip(ParseLeaving, b);
  RoundTrip(ParseMove, b);
  (void)ParseData(b);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Bytes in(reinterpret_cast<const std::byte*>(data), size);
  if (size >= spare::hot::kHeaderSize) (void)spare::hot::FrameSize(in.first(spare::hot::kHeaderSize));
  if (auto f = spare::hot::Decode(in); f.ok()) AllBodies(f->body);
  AllBodies(in);
  return 0;
}
