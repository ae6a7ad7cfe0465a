// fuzz_ipc_wire: the agent ↔ instance / CLI protocol (ipc/wire.h) as the
// agent reads it from its unix socket: Decode of one frame (header, JSON
// body, blob). A frame it accepts must encode again and decode to the same
// type, generation and blob.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "ipc/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = spare::ipc::Decode(std::span(reinterpret_cast<const std::byte*>(data), size));
  if (!m.ok()) return 0;
  auto bytes = spare::ipc::Encode(*m);
  if (!bytes.ok()) return 0;  // (limits are checked on the way out too)
  auto again = spare::ipc::Decode(std::as_bytes(std::span(bytes->data(), bytes->size())));
  if (!again.ok() || again->type != m->type || again->generation != m->generation ||
      again->blob != m->blob)
    std::abort();
  return 0;
}
