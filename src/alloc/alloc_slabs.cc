// alloc_slabs.cc — the arena's small blocks: 64 KiB slabs of one size class.
//
// A slab's state lives in the page-map entry of its first page: the head of
// its free list (a block index; each free block holds the next index in its
// first 2 bytes), its live count and how many blocks were ever carved
// (blocks past that are untouched: no pre-carving, no dirty pages). Each
// class lists the slabs that have room; allocation takes from the first.
#include <cstring>

#include "alloc/layout.h"
#include "common/check.h"
#include "spare/alloc.h"
#include "spare/declare.h"

namespace spare {
using namespace alloc_internal;
namespace {

uint32_t Live(const Arena::PageInfo& h) { return h.arg & 0xFFFF; }
uint32_t Carved(const Arena::PageInfo& h) { return h.arg >> 16; }
void SetCounts(Arena::PageInfo& h, uint32_t live, uint32_t carved) {
  h.arg = live | (carved << 16);
}
bool Full(const Arena::PageInfo& h) { return h.free == 0 && Carved(h) == BlocksPerSlab(h.cls); }

}  // namespace

void Arena::PushSlab(size_t cls, uint32_t head) {
  uint32_t first = classes_[cls].partial;
  Mut(head).next = first;
  Mut(head).prev = 0;
  if (first != 0) Mut(first).prev = head;
  classes_[cls].partial = head;
}

void Arena::RemoveSlab(size_t cls, uint32_t head) {
  PageInfo& h = Mut(head);
  if (h.prev != 0) {
    Mut(h.prev).next = h.next;
  } else {
    SPARE_CHECK(classes_[cls].partial == head);
    classes_[cls].partial = h.next;
  }
  if (h.next != 0) Mut(h.next).prev = h.prev;
  h.next = h.prev = 0;
}

void* Arena::AllocateSmall(size_t cls) {
  uint32_t head = classes_[cls].partial;
  if (head == 0) {
    head = AllocPages(kSlabPages);
    if (head == 0) return nullptr;
    Mut(head) = {kSlabHead, uint8_t(cls), 0, 0, 0, 0};
    for (uint32_t i = 1; i < kSlabPages; ++i)
      Mut(head + i) = {kSlabPart, uint8_t(cls), 0, head, 0, 0};
    PushSlab(cls, head);
  }
  PageInfo& h = Mut(head);
  const uint64_t size = kClassSize[cls];
  std::byte* slab = base() + uint64_t{head} * kPage;
  uint32_t live = Live(h), carved = Carved(h), index;
  if (h.free != 0) {
    index = h.free - 1u;
    uint16_t next;
    std::memcpy(&next, slab + index * size, sizeof next);
    // A use-after-free that overwrote the link would hand out wild memory.
    SPARE_CHECK(next <= carved);
    h.free = next;
  } else {
    index = carved++;
  }
  SetCounts(h, live + 1, carved);
  if (Full(h)) RemoveSlab(cls, head);
  used_bytes_ += size;
  ++allocations_;
  return slab + index * size;
}

void Arena::FreeSmall(uint32_t page, uint64_t offset) {
  const PageInfo* m = map();
  const uint32_t head = m[page].kind == kSlabHead ? page : m[page].arg;
  PageInfo& h = Mut(head);
  SPARE_CHECK(h.kind == kSlabHead);
  const size_t cls = h.cls;
  const uint64_t size = kClassSize[cls];
  const uint64_t rel = offset - uint64_t{head} * kPage;
  const uint32_t index = static_cast<uint32_t>(rel / size);
  const uint32_t live = Live(h), carved = Carved(h);
  // Not a block start, never handed out, or more frees than allocations.
  SPARE_CHECK(rel % size == 0 && index < carved && live > 0);
  const bool was_full = Full(h);
  uint16_t link = h.free;
  std::memcpy(base() + offset, &link, sizeof link);
  DeclareWrite(base() + offset, sizeof link);
  h.free = static_cast<uint16_t>(index + 1);
  SetCounts(h, live - 1, carved);
  used_bytes_ -= size;
  if (was_full) PushSlab(cls, head);
  // An empty slab goes back to the pages, unless it is the class's only
  // slab with room: one block allocated and freed in turn must not make
  // and unmake a slab each time.
  if (live - 1 == 0 && !(classes_[cls].partial == head && h.next == 0)) {
    RemoveSlab(cls, head);
    for (uint32_t i = 0; i < kSlabPages; ++i) Mut(head + i) = {};
    FreePages(head, kSlabPages);
  }
}

}  // namespace spare
