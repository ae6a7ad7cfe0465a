// alloc.cc — the region arena (see include/spare/alloc.h for the layout).
#include "spare/alloc.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/check.h"

namespace spare {
namespace {

constexpr size_t kPage = Arena::kPageSize;
constexpr uint64_t kSlabPages = 16;  // 64 KiB per slab

// 16-byte steps to 128, then four classes per power of two up to 8 KiB.
constexpr uint32_t kClassSize[Arena::kNumClasses] = {
    16,  32,  48,  64,   80,   96,   112,  128,  160,  192,  224,  256,  320,  384,  448,  512,
    640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192};
static_assert(kClassSize[Arena::kNumClasses - 1] == Arena::kMaxSmall);

constexpr size_t kNoClass = Arena::kNumClasses;

// Smallest class holding n bytes whose size is a multiple of align (slabs
// are page aligned, so such blocks are aligned). kNoClass: use pages.
size_t ClassFor(size_t n, size_t align) {
  if (n > Arena::kMaxSmall) return kNoClass;
  size_t c;
  if (n <= 128) {
    c = (n + 15) / 16 - 1;
  } else {
    unsigned lg = std::bit_width(n - 1) - 1;  // n in (2^lg, 2^(lg+1)]
    size_t step = size_t{1} << (lg - 2);
    c = 8 + (lg - 7) * 4 + (n - 1 - (size_t{1} << lg)) / step;
  }
  while (c < Arena::kNumClasses && kClassSize[c] % align != 0) ++c;
  return c;
}

size_t BucketFor(uint64_t npages) {
  size_t b = std::bit_width(npages) - 1;
  return b < Arena::kPageBuckets ? b : Arena::kPageBuckets - 1;
}

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

enum PageKind : uint32_t { kNone = 0, kSlab = 1, kLarge = 2, kFreeHead = 3, kFreeTail = 4 };

// One entry per page of the region. Pages inside a large or free run other
// than its head (and a free run's tail) are kNone.
struct Arena::PageInfo {
  uint32_t kind;
  uint32_t arg;   // kSlab: class; kLarge/kFreeHead/kFreeTail: run length in pages
  uint32_t next;  // kFreeHead: next free run of the bucket, 0 = none
  uint32_t prev;  // kFreeHead: previous free run of the bucket, 0 = none
};
static_assert(sizeof(Arena) <= Arena::kPageSize, "the header must fit in page 0");

Arena::PageInfo* Arena::map() const { return reinterpret_cast<PageInfo*>(base() + kPage); }

uint64_t Arena::HeaderChecksum() const {
  return XXH64(this, offsetof(Arena, checksum_), 0x5350415245ULL);
}

Status Arena::Validate(const Arena* a, void* base, size_t size) {
  const uint64_t at = reinterpret_cast<uintptr_t>(base);
  if (a->magic_ != kMagic) {
    return Status(Code::kBadMessage, "region at " + Hex(at) + " is not an arena: magic " +
                                         Hex(a->magic_) + ", expected " + Hex(kMagic) +
                                         "; not formatting it since it is not zero");
  }
  if (a->version_ != kVersion) {
    return Status(Code::kUnsupported, "arena at " + Hex(at) + " has format version " +
                                          std::to_string(a->version_) + "; this build reads " +
                                          std::to_string(kVersion));
  }
  if (a->checksum_ != a->HeaderChecksum()) {
    return Status(Code::kBadMessage, "arena at " + Hex(at) + ": header checksum mismatch (" +
                                         Hex(a->checksum_) + " stored, " +
                                         Hex(a->HeaderChecksum()) + " computed): corrupt header");
  }
  if (a->region_size_ != size) {
    return Status(Code::kInvalidArgument,
                  "arena at " + Hex(at) + " was formatted for " + std::to_string(a->region_size_) +
                      " bytes but the region is " + std::to_string(size) + " bytes");
  }
  if (a->base_address_ != at) {
    return Status(Code::kFailedPrecondition, "arena was formatted at " + Hex(a->base_address_) +
                                                 " but is mapped at " + Hex(at) +
                                                 ": the pointers stored in it would be wrong");
  }
  // The mutable state must at least be in range; a walk of every free list
  // would touch the whole arena, so only the heads are checked.
  auto corrupt = [&](const std::string& what) {
    return Status(Code::kBadMessage, "arena at " + Hex(at) + ": corrupt state: " + what);
  };
  const uint64_t pages = a->total_pages_, data = a->data_page_;
  if (a->header_bytes_ != sizeof(Arena) || pages != size / kPage || data >= pages)
    return corrupt("layout fields");
  if (a->bump_page_ < data || a->bump_page_ > a->high_water_page_ || a->high_water_page_ > pages)
    return corrupt("bump page " + std::to_string(a->bump_page_));
  if (a->used_bytes_ > (pages - data) * kPage) return corrupt("used bytes");
  if (a->root_ != 0 && (a->root_ < data * kPage || a->root_ >= size))
    return corrupt("root offset " + Hex(a->root_));
  for (size_t b = 0; b < kPageBuckets; ++b) {
    uint32_t h = a->page_heads_[b];
    if (h != 0 && (h < data || h >= a->bump_page_ || a->map()[h].kind != kFreeHead))
      return corrupt("free page list " + std::to_string(b));
  }
  for (size_t c = 0; c < kNumClasses; ++c) {
    const ClassState& s = a->classes_[c];
    auto bad = [&](uint64_t off) { return off != 0 && (off < data * kPage || off > size); };
    if (bad(s.free_head) || bad(s.cursor) || bad(s.end) || s.cursor > s.end ||
        s.free_head % kMinAlign != 0)
      return corrupt("size class " + std::to_string(kClassSize[c]));
  }
  return Status::Ok();
}

void Arena::Format(size_t size) {
  magic_ = kMagic;
  version_ = kVersion;
  header_bytes_ = sizeof(Arena);
  base_address_ = reinterpret_cast<uintptr_t>(this);
  region_size_ = size;
  total_pages_ = size / kPage;
  data_page_ = 1 + (total_pages_ * sizeof(PageInfo) + kPage - 1) / kPage;
  checksum_ = HeaderChecksum();
  root_ = 0;
  bump_page_ = high_water_page_ = data_page_;
  used_bytes_ = allocations_ = 0;
  // Everything else is already zero (a fresh region).
}

Result<Arena*> Arena::Open(void* base, size_t size) {
  const uint64_t at = reinterpret_cast<uintptr_t>(base);
  if (base == nullptr || at % kPage != 0 || size % kPage != 0) {
    return Status(Code::kInvalidArgument, "arena region " + Hex(at) + " + " + std::to_string(size) +
                                              " is not page aligned");
  }
  if (size < kMinRegionSize || size / kPage > UINT32_MAX) {
    return Status(Code::kInvalidArgument, "arena region of " + std::to_string(size) +
                                              " bytes: need between " +
                                              std::to_string(kMinRegionSize) + " and 16 TiB");
  }
  // A fresh region is all zero: check page 0 only (reading the whole region
  // would fault in every page).
  const auto* bytes = static_cast<const unsigned char*>(base);
  bool zero = bytes[0] == 0 && std::memcmp(bytes, bytes + 1, kPage - 1) == 0;
  if (zero) {
    Arena* a = new (base) Arena();
    a->Format(size);
    return a;
  }
  Arena* a = std::launder(reinterpret_cast<Arena*>(base));
  SPARE_RETURN_IF_ERROR(Validate(a, base, size));
  return a;
}

size_t Arena::capacity() const { return (total_pages_ - data_page_) * kPage; }
size_t Arena::footprint_bytes() const { return (high_water_page_ - data_page_) * kPage; }

bool Arena::contains(const void* p) const {
  auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(base());
  return a >= b + data_page_ * kPage && a < b + region_size_;
}

void* Arena::root() const { return root_ == 0 ? nullptr : base() + root_; }

void Arena::set_root(void* p) {
  SPARE_CHECK(p == nullptr || contains(p));
  root_ = p == nullptr ? 0 : static_cast<std::byte*>(p) - base();
}

void* Arena::allocate(size_t n, size_t align) {
  if (align == 0 || align > kMaxAlign || (align & (align - 1)) != 0) return nullptr;
  if (align < kMinAlign) align = kMinAlign;
  if (n == 0) n = 1;
  size_t cls = ClassFor(n, align);
  if (cls == kNoClass) return AllocateLarge(n, /*zero=*/false);
  return AllocateSmall(cls);
}

void* Arena::allocate_zeroed(size_t n, size_t align) {
  if (align == 0 || align > kMaxAlign || (align & (align - 1)) != 0) return nullptr;
  if (align < kMinAlign) align = kMinAlign;
  if (n == 0) n = 1;
  size_t cls = ClassFor(n, align);
  if (cls == kNoClass) return AllocateLarge(n, /*zero=*/true);
  void* p = AllocateSmall(cls);
  if (p != nullptr) std::memset(p, 0, n);
  return p;
}

void* Arena::AllocateSmall(size_t cls) {
  ClassState& c = classes_[cls];
  const uint64_t size = kClassSize[cls];
  uint64_t off;
  if (c.free_head != 0) {
    off = c.free_head;
    uint64_t next;
    std::memcpy(&next, base() + off, sizeof next);
    // A use-after-free that overwrote the link would hand out wild memory.
    SPARE_CHECK(next == 0 ||
                (next >= data_page_ * kPage && next < region_size_ && next % kMinAlign == 0));
    c.free_head = next;
  } else if (c.end - c.cursor >= size) {
    off = c.cursor;
    c.cursor += size;
  } else {
    uint32_t page = AllocPages(kSlabPages);
    if (page == 0) return nullptr;
    PageInfo* m = map();
    for (uint64_t i = 0; i < kSlabPages; ++i) m[page + i] = {kSlab, uint32_t(cls), 0, 0};
    off = uint64_t{page} * kPage;
    c.cursor = off + size;
    c.end = off + kSlabPages * kPage;
  }
  used_bytes_ += size;
  ++allocations_;
  return base() + off;
}

void* Arena::AllocateLarge(size_t n, bool zero) {
  if (n > capacity()) return nullptr;
  uint64_t npages = (n + kPage - 1) / kPage;
  uint64_t pristine = high_water_page_;
  uint32_t page = AllocPages(npages);
  if (page == 0) return nullptr;
  map()[page] = {kLarge, uint32_t(npages), 0, 0};
  used_bytes_ += npages * kPage;
  ++allocations_;
  std::byte* p = base() + uint64_t{page} * kPage;
  // Pages at or past the old high-water mark were never handed out: zero.
  if (zero && page < pristine)
    std::memset(p, 0, (std::min(page + npages, pristine) - page) * kPage);
  return p;
}

// --- Page runs ---------------------------------------------------------

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
  PageInfo* m = map();
  const uint64_t len = m[page].arg;
  RemoveFreeRun(page);
  m[page] = {kNone, 0, 0, 0};
  if (len > 1) m[page + len - 1] = {kNone, 0, 0, 0};
  if (len > npages) PushFreeRun(uint32_t(page + npages), len - npages);
}

void Arena::PushFreeRun(uint32_t page, uint64_t npages) {
  PageInfo* m = map();
  size_t b = BucketFor(npages);
  uint32_t head = page_heads_[b];
  m[page] = {kFreeHead, uint32_t(npages), head, 0};
  if (npages > 1) m[page + npages - 1] = {kFreeTail, uint32_t(npages), 0, 0};
  if (head != 0) m[head].prev = page;
  page_heads_[b] = page;
}

void Arena::RemoveFreeRun(uint32_t page) {
  PageInfo* m = map();
  PageInfo& e = m[page];
  SPARE_CHECK(e.kind == kFreeHead);
  if (e.prev != 0) {
    m[e.prev].next = e.next;
  } else {
    page_heads_[BucketFor(e.arg)] = e.next;
  }
  if (e.next != 0) m[e.next].prev = e.prev;
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
  PageInfo* m = map();
  m[page] = {kNone, 0, 0, 0};
  // Coalesce with a free run on the right (never one ending at the bump).
  uint64_t right = uint64_t{page} + npages;
  if (right < bump_page_ && m[right].kind == kFreeHead) {
    uint64_t len = m[right].arg;
    RemoveFreeRun(uint32_t(right));
    m[right] = {kNone, 0, 0, 0};
    if (len > 1) m[right + len - 1] = {kNone, 0, 0, 0};
    npages += len;
  }
  // ... and on the left.
  if (uint32_t left = FreeRunEndingAt(page - 1); left != 0) {
    uint64_t len = m[left].arg;
    RemoveFreeRun(left);
    m[left] = {kNone, 0, 0, 0};
    m[page - 1] = {kNone, 0, 0, 0};
    page = left;
    npages += len;
  }
  if (page + npages == bump_page_) {
    bump_page_ = page;  // entries of the merged run were all cleared above
  } else {
    PushFreeRun(page, npages);
  }
}

// --- Freeing -------------------------------------------------------------

void Arena::deallocate(void* p) {
  if (p == nullptr) return;
  if (!contains(p)) {
    std::fprintf(stderr, "spare: Arena::deallocate(%p): not in arena %p\n", p, (void*)base());
    SPARE_CHECK(contains(p));
  }
  const uint64_t off = static_cast<std::byte*>(p) - base();
  const uint32_t page = uint32_t(off / kPage);
  PageInfo& e = map()[page];
  if (e.kind == kSlab) {
    SPARE_CHECK(off % kMinAlign == 0);
    ClassState& c = classes_[e.arg];
    std::memcpy(p, &c.free_head, sizeof c.free_head);
    c.free_head = off;
    used_bytes_ -= kClassSize[e.arg];
  } else {
    // Anything else is a pointer the arena did not hand out (or a double free).
    SPARE_CHECK(e.kind == kLarge && off % kPage == 0);
    used_bytes_ -= uint64_t{e.arg} * kPage;
    FreePages(page, e.arg);
  }
  --allocations_;
}

void Arena::deallocate(void* p, size_t n) {
  if (p == nullptr) return;
  SPARE_CHECK(usable_size(p) >= n);
  deallocate(p);
}

size_t Arena::usable_size(const void* p) const {
  SPARE_CHECK(contains(p));
  const uint64_t off = static_cast<const std::byte*>(p) - base();
  const PageInfo& e = map()[off / kPage];
  if (e.kind == kSlab) return kClassSize[e.arg];
  SPARE_CHECK(e.kind == kLarge && off % kPage == 0);
  return uint64_t{e.arg} * kPage;
}

void Arena::Reset() {
  std::memset(static_cast<void*>(map() + data_page_), 0,
              (high_water_page_ - data_page_) * sizeof(PageInfo));
  root_ = 0;
  bump_page_ = data_page_;
  used_bytes_ = allocations_ = 0;
  std::memset(page_heads_, 0, sizeof page_heads_);
  std::memset(static_cast<void*>(classes_), 0, sizeof classes_);
}

void ArenaAllocatorExhausted(size_t bytes) {
  std::fprintf(stderr, "spare: ArenaAllocator: arena full, could not allocate %zu bytes\n", bytes);
  std::abort();
}

}  // namespace spare
