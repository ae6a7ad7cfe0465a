// fuzz_staging: the staging slots an agent validates before it applies an
// epoch (epoch/staging.h) — shared memory the instance can scribble on at
// any time. Input: one flags byte, then the bytes of the epoch's slots
// (split evenly between its parts, each written at the start of its slot
// over zeros):
//   bits 0-1: first slot (0..2 of 3), bits 2-3: parts - 1 (1..3, wrapping),
//   bit 4: seal the slots (SealSlot: checksums made to match, so the
//          layout and bounds checks are what decides), bit 5: validate
//          as generation 8 too (slots filled by another generation).
// Whatever ValidateEpoch accepts must stay inside the regions and inside
// the slots it came from; the staging header check (OpenStaging) gets the
// same bytes as a header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "epoch/staging.h"

namespace {

using namespace spare::epoch;

constexpr uint32_t kSlots = 3;
constexpr size_t kPrefix = 16 * 1024;  // the part of a slot an input can reach

struct Area {
  std::vector<std::byte> bytes;
  StagingView view;
  Area() : bytes(StagingBytes(kSlots, kMinSlotSize)) {
    view.base = bytes.data();
    view.size = bytes.size();
    view.slot_count = kSlots;
    view.slot_size = kMinSlotSize;
    InitStaging(view);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Area area;
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const uint32_t first = (flags & 3) % kSlots;
  const uint32_t parts = ((flags >> 2) & 3) % kSlots + 1;
  const uint64_t generation = (flags & 32) ? 8 : 7;
  const uint8_t* body = data + 1;
  const size_t n = size - 1;
  const size_t per = parts ? (n + parts - 1) / parts : n;
  for (uint32_t p = 0; p < kSlots; ++p) std::memset(area.view.slot(p), 0, kPrefix);
  for (uint32_t p = 0; p < parts; ++p) {
    const size_t from = std::min(n, p * per), len = std::min(per, std::min(n - from, kPrefix));
    std::memcpy(area.view.slot((first + p) % kSlots), body + from, len);
    if (flags & 16) SealSlot(area.view, (first + p) % kSlots);
  }
  const RegionTarget regions[] = {{-1, 64 * 1024, nullptr}, {-1, 1 << 20, nullptr},
                                  {-1, 4096, nullptr}};
  auto v = ValidateEpoch(area.view, 7, 5, first, parts, regions);
  if (v.ok()) {
    const std::byte* lo = area.view.base + kSlotBase;
    const std::byte* hi = area.view.base + area.view.size;
    for (const auto& w : v->writes) {
      if (w.region >= 3 || w.length == 0 || w.offset + w.length > regions[w.region].size ||
          w.src < lo || w.src + w.length > hi)
        std::abort();  // accepted a write out of bounds
    }
    if (v->record.size() > kMaxRecord) std::abort();
  }
  if (generation == 8) (void)ValidateEpoch(area.view, 8, 5, first, parts, regions);
  // The same bytes as the area's header, as an instance checks it.
  std::vector<std::byte> header(area.bytes.begin(), area.bytes.begin() + kSlotBase);
  std::memcpy(header.data(), body, std::min(n, header.size()));
  (void)OpenStaging(header.data(), header.size());
  return 0;
}
