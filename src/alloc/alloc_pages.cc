// alloc_pages.cc — the arena's page runs: allocation from free-run buckets
// or the bump pointer, and freeing with coalescing. Free runs are described
// only in the page map (head and tail entries), never in the pages
// themselves, so freeing a large block leaves its data pages clean.
#include <bit>

#include "alloc/layout.h"
#include "common/check.h"
#include "spare/alloc.h"

namespace spare {
using namespace alloc_internal;
namespace {

size_t BucketFor(uint64_t npages) {
  size_t b = std::bit_width(npages) - 1;
  return b < Arena::kPageBuckets ? b : Arena::kPageBuckets - 1;
}

}  // namespace

uint32_t Arena::AllocPages(uint64_t npages) {
  PageInfo* m = map();
  size_t b = BucketFor(npages);
  for (uint32_t p = page_heads_[b]; p != 0; p = m[p].next) {
    if (m[p].arg >= npages) {
      TakeFromFreeRun(p, npages);
      return p;
    }
  }
  for (size_t bb = b + 1; bb < kPageBuckets; ++bb) {
    if (uint32_t p = page_heads_[bb]; p != 0) {
      TakeFromFreeRun(p, npages);
      return p;
    }
  }
  if (npages > total_pages_ - bump_page_) return 0;
  uint32_t p = uint32_t(bump_page_);
  bump_page_ += npages;
  if (bump_page_ > high_water_page_) high_water_page_ = bump_page_;
  return p;
}

// Allocates the first npages of the free run at page; the rest stays free.
void Arena::TakeFromFreeRun(uint32_t page, uint64_t npages) {
  const uint64_t len = map()[page].arg;
  RemoveFreeRun(page);
  Mut(page) = {};
  if (len > 1) Mut(uint32_t(page + len - 1)) = {};
  if (len > npages) PushFreeRun(uint32_t(page + npages), len - npages);
}

void Arena::PushFreeRun(uint32_t page, uint64_t npages) {
  size_t b = BucketFor(npages);
  uint32_t head = page_heads_[b];
  Mut(page) = {kFreeHead, 0, 0, uint32_t(npages), head, 0};
  if (npages > 1) Mut(uint32_t(page + npages - 1)) = {kFreeTail, 0, 0, uint32_t(npages), 0, 0};
  if (head != 0) Mut(head).prev = page;
  page_heads_[b] = page;
}

void Arena::RemoveFreeRun(uint32_t page) {
  PageInfo& e = Mut(page);
  SPARE_CHECK(e.kind == kFreeHead);
  if (e.prev != 0) {
    Mut(e.prev).next = e.next;
  } else {
    page_heads_[BucketFor(e.arg)] = e.next;
  }
  if (e.next != 0) Mut(e.next).prev = e.prev;
  e.next = e.prev = 0;
}

// Start of the free run whose last page is `page`, or 0.
uint32_t Arena::FreeRunEndingAt(uint32_t page) const {
  if (page < data_page_) return 0;
  const PageInfo& e = map()[page];
  if (e.kind == kFreeTail) return page - e.arg + 1;
  if (e.kind == kFreeHead && e.arg == 1) return page;
  return 0;
}

void Arena::FreePages(uint32_t page, uint64_t npages) {
  const PageInfo* m = map();
  Mut(page) = {};
  // Coalesce with a free run on the right (never one ending at the bump).
  uint64_t right = uint64_t{page} + npages;
  if (right < bump_page_ && m[right].kind == kFreeHead) {
    uint64_t len = m[right].arg;
    RemoveFreeRun(uint32_t(right));
    Mut(uint32_t(right)) = {};
    if (len > 1) Mut(uint32_t(right + len - 1)) = {};
    npages += len;
  }
  // ... and on the left.
  if (uint32_t left = FreeRunEndingAt(page - 1); left != 0) {
    uint64_t len = m[left].arg;
    RemoveFreeRun(left);
    Mut(left) = {};
    Mut(page - 1) = {};
    page = left;
    npages += len;
  }
  if (page + npages == bump_page_) {
    bump_page_ = page;  // entries of the merged run were all cleared above
  } else {
    PushFreeRun(page, npages);
  }
}

}  // namespace spare
