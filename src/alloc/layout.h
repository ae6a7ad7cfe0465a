// alloc/layout.h — the arena's private layout: size classes and the page map.
#pragma once

#include <cstddef>
#include <cstdint>

#include "spare/alloc.h"

namespace spare::alloc_internal {

inline constexpr size_t kPage = Arena::kPageSize;
inline constexpr uint64_t kSlabPages = 16;  // 64 KiB per slab

// 16-byte steps to 128, then four classes per power of two up to 8 KiB.
inline constexpr uint32_t kClassSize[Arena::kNumClasses] = {
    16,  32,  48,  64,   80,   96,   112,  128,  160,  192,  224,  256,  320,  384,  448,  512,
    640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192};
static_assert(kClassSize[Arena::kNumClasses - 1] == Arena::kMaxSmall);

inline constexpr uint32_t BlocksPerSlab(size_t cls) {
  return static_cast<uint32_t>(kSlabPages * kPage / kClassSize[cls]);
}
static_assert(BlocksPerSlab(0) <= UINT16_MAX, "block indexes are 16-bit");

enum PageKind : uint8_t {
  kNone = 0,      // unused, or inside a run (not its head or free tail)
  kSlabHead = 1,  // first page of a slab: its state
  kSlabPart = 2,  // other pages of a slab
  kLarge = 3,     // first page of an allocated run
  kFreeHead = 4,  // first page of a free run
  kFreeTail = 5,  // last page of a free run longer than one page
};

}  // namespace spare::alloc_internal

namespace spare {

// One entry per page of the region (16 bytes).
//   kSlabHead: cls; free = 1 + index of the first free block (0: none);
//              arg = live blocks | carved blocks << 16 (carved: handed out
//              at least once, the slab's bump cursor); next/prev link the
//              class's slabs that have room
//   kSlabPart: cls; arg = page of the slab head
//   kLarge:    arg = run length in pages
//   kFreeHead: arg = run length; next/prev link the bucket's free runs
//   kFreeTail: arg = run length
// Page links are page indexes; 0 (the header page) means none.
struct Arena::PageInfo {
  uint8_t kind;
  uint8_t cls;
  uint16_t free;
  uint32_t arg;
  uint32_t next;
  uint32_t prev;
};

}  // namespace spare
