// alloc.cc — the region arena (see include/spare/alloc.h for the layout).
#include "spare/alloc.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "alloc/layout.h"
#include "common/check.h"
#include "common/hex.h"
#include "spare/declare.h"

namespace spare {
using namespace alloc_internal;
namespace {

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

}  // namespace

static_assert(sizeof(Arena) <= Arena::kPageSize, "the header must fit in page 0");
static_assert(sizeof(Arena::PageInfo) == 16);  // kept in Format()'s layout math

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
    uint32_t h = a->classes_[c].partial;
    if (h != 0 &&
        (h < data || h >= a->bump_page_ || a->map()[h].kind != kSlabHead || a->map()[h].cls != c))
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
  DeclareWrite(this, sizeof(Arena));
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

Arena::PageInfo& Arena::Mut(uint32_t page) {
  PageInfo& e = map()[page];
  DeclareWrite(e);
  return e;
}

void Arena::DeclareState() {
  const auto* lo = reinterpret_cast<const std::byte*>(&root_);
  const auto* hi = reinterpret_cast<const std::byte*>(classes_ + kNumClasses);
  DeclareWrite(lo, static_cast<size_t>(hi - lo));
}

void* Arena::root() const { return root_ == 0 ? nullptr : base() + root_; }

void Arena::set_root(void* p) {
  SPARE_CHECK(p == nullptr || contains(p));
  root_ = p == nullptr ? 0 : static_cast<std::byte*>(p) - base();
  DeclareWrite(root_);
}

void* Arena::allocate(size_t n, size_t align) {
  if (align == 0 || align > kMaxAlign || (align & (align - 1)) != 0) return nullptr;
  if (align < kMinAlign) align = kMinAlign;
  if (n == 0) n = 1;
  size_t cls = ClassFor(n, align);
  DeclareState();
  void* p = cls == kNoClass ? AllocateLarge(n, /*zero=*/false) : AllocateSmall(cls);
  if (p != nullptr) DeclareWrite(p, n);  // the caller fills it
  return p;
}

void* Arena::allocate_zeroed(size_t n, size_t align) {
  if (align == 0 || align > kMaxAlign || (align & (align - 1)) != 0) return nullptr;
  if (align < kMinAlign) align = kMinAlign;
  if (n == 0) n = 1;
  size_t cls = ClassFor(n, align);
  DeclareState();
  if (cls == kNoClass) return AllocateLarge(n, /*zero=*/true);
  void* p = AllocateSmall(cls);
  if (p != nullptr) {
    std::memset(p, 0, n);
    DeclareWrite(p, n);
  }
  return p;
}

void* Arena::AllocateLarge(size_t n, bool zero) {
  if (n > capacity()) return nullptr;
  uint64_t npages = (n + kPage - 1) / kPage;
  uint64_t pristine = high_water_page_;
  uint32_t page = AllocPages(npages);
  if (page == 0) return nullptr;
  Mut(page) = {kLarge, 0, 0, uint32_t(npages), 0, 0};
  used_bytes_ += npages * kPage;
  ++allocations_;
  std::byte* p = base() + uint64_t{page} * kPage;
  // Pages at or past the old high-water mark were never handed out: zero
  // (in the committed image too, so not declared either).
  if (zero && page < pristine) {
    const size_t n_used = (std::min(page + npages, pristine) - page) * kPage;
    std::memset(p, 0, n_used);
    DeclareWrite(p, n_used);
  }
  return p;
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
  DeclareState();
  if (e.kind == kSlabHead || e.kind == kSlabPart) {
    FreeSmall(page, off);
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
  if (e.kind == kSlabHead || e.kind == kSlabPart) return kClassSize[e.cls];
  SPARE_CHECK(e.kind == kLarge && off % kPage == 0);
  return uint64_t{e.arg} * kPage;
}

void Arena::Reset() {
  DeclareState();
  std::memset(static_cast<void*>(map() + data_page_), 0,
              (high_water_page_ - data_page_) * sizeof(PageInfo));
  DeclareWrite(map() + data_page_, (high_water_page_ - data_page_) * sizeof(PageInfo));
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
