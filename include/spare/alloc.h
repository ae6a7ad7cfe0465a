// spare/alloc.h — a deterministic heap that lives inside a Region.
//
// An Arena lets a program keep ordinary linked data structures (hash
// tables, trees, lists) in a spare Region. After a crash the restarted
// program maps the region at the same address and finds the arena exactly
// as of the last commit: every block it had allocated, its free lists and
// its root pointer. Plain pointers between blocks stay valid.
//
//   auto heap = rt->region("heap", 1 << 30);
//   auto arena = spare::Arena::Open((*heap)->data(), (*heap)->size());
//   if (!arena.ok()) return arena.status();
//   auto* table = static_cast<Table*>((*arena)->root());
//   if (table == nullptr) {             // first run: build the structure
//     table = new ((*arena)->allocate(sizeof(Table))) Table();
//     (*arena)->set_root(table);
//   }
//
// Layout (all inside the region, nothing in the process heap):
//   page 0        the Arena object itself: magic, version, sizes, the
//                 address it was formatted at, a checksum of those, then
//                 the mutable state (bump page, free lists, root, counters)
//   pages 1..M    the page map: 16 bytes per page of the region saying what
//                 the page holds (slab of a size class, start of a large
//                 run, head/tail of a free run)
//   pages M+1..   data
// Small requests (<= kMaxSmall) come from 64 KiB slabs of one size class
// each (16-byte steps up to 128 B, then four classes per power of two up
// to 8 KiB). A slab keeps its own free list and bump cursor in its
// page-map entry; each class lists its slabs that have room. An empty slab
// goes back to the page allocator unless it is its class's only slab with
// room (so alloc/free of one block does not churn slabs). Large requests
// take whole pages: free runs live in power-of-two buckets and coalesce
// with free neighbours and with the bump pointer.
//
// Declared writes (spare/declare.h): in a region mapped with
// WriteTracking::kDeclared the arena declares everything it writes — its
// header state, page-map entries, free-list links, the bytes
// allocate_zeroed() clears — and every new block: allocate(n) counts the
// first n bytes of the block as written, since its caller is about to fill
// it. The program declares only what it changes in place afterwards.
// Outside declared regions the declarations cost one compare.
//
// Dirty pages: every page an arena writes is shipped by the next commit,
// so the arena writes only what it must. Allocation writes the header page
// and its slab's page-map entry; it never pre-carves or zeroes memory.
// Freeing a small block writes its first 2 bytes (the free-list link);
// freeing a large run writes only page-map entries, never the run's data. allocate_zeroed() skips
// pages that were never handed out (still zero since the region was formatted).
//
// Determinism: the addresses returned are a pure function of the sequence
// of calls (no randomness, no dependence on the process or the host), and
// the arena's metadata stores offsets, so two arenas at different bases
// driven by the same calls hand out the same offsets (seed 001).
//
// Crash consistency: spare restores a region only as of a commit, and a
// program commits only at quiescent points, so no arena call is ever seen
// half done. The arena needs no journal.
//
// What may NOT be stored in an arena (or anywhere in a region) — see
// docs/REGIONS.md for why and what to do instead:
//   - file descriptors, sockets, epoll/timer fds (they die with the process)
//   - pointers to the process heap (malloc/new), the stack, or TLS
//   - pointers into shared libraries' data (their load address may change;
//     code pointers and vtables of the main binary are fine only because
//     `spare run` disables address-space randomization)
//   - process-shared or robust mutexes, condition variables, futexes
//   - std::string, std::vector, std::map... using the default allocator
//     (their buffers live in the process heap); use ArenaAllocator below
//   - pids, thread ids, pointers to the Runtime, Region or Gate objects
//
// Threading: not thread-safe. Use an arena from one thread (normally the
// thread that calls Runtime::commit), or guard it with your own lock kept
// outside the region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>

#include "spare/status.h"

namespace spare {

class Arena {
 public:
  static constexpr uint64_t kMagic = 0x314E524141524153ULL;  // "SARAARN1" little-endian
  static constexpr uint32_t kVersion = 2;
  static constexpr size_t kPageSize = 4096;
  static constexpr size_t kMinAlign = 16;  // every block is 16-byte aligned
  static constexpr size_t kMaxAlign = kPageSize;
  static constexpr size_t kMaxSmall = 8192;  // larger requests take whole pages
  static constexpr size_t kMinRegionSize = 256 * 1024;
  static constexpr size_t kNumClasses = 32;
  static constexpr size_t kPageBuckets = 40;

  // Formats or reopens the arena occupying [base, base+size).
  //  - first page all zero (a fresh region): formats a new, empty arena.
  //    REQUIRES: the whole region is zero (true of a new region).
  //  - otherwise validates the header and returns the existing arena,
  //    contents and root untouched.
  // Errors (nothing in the region is changed):
  //   kInvalidArgument   base/size not page aligned, size too small or too
  //                      large, or size differs from the one formatted
  //   kBadMessage        not an arena (bad magic), header checksum mismatch,
  //                      or mutable state out of range (corrupt)
  //   kUnsupported       arena format version this build does not read
  //   kFailedPrecondition  the arena was formatted at another address, so
  //                      the pointers stored in it would be wrong
  static Result<Arena*> Open(void* base, size_t size);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // A block of at least n bytes aligned to `align` (a power of two,
  // <= kMaxAlign; smaller values are raised to kMinAlign). Large blocks
  // (n > kMaxSmall) are page aligned. nullptr when the arena is full or
  // align is invalid. n == 0 is treated as 1.
  void* allocate(size_t n, size_t align = kMinAlign);
  // Same, with the first n bytes zero.
  void* allocate_zeroed(size_t n, size_t align = kMinAlign);
  // Returns a block to the arena. p == nullptr is a no-op.
  // REQUIRES: p came from this arena's allocate and was not freed since;
  // a pointer the arena never handed out aborts.
  void deallocate(void* p);
  // Same; n is the size passed to allocate (checked against the block).
  void deallocate(void* p, size_t n);
  // Bytes usable at p (>= the size requested). REQUIRES: p is allocated.
  size_t usable_size(const void* p) const;
  // Frees every block at once and clears the root. Touches the header and
  // the page-map entries of pages ever used, not the data pages.
  void Reset();

  // One pointer the program keeps to find its structures after a restart.
  // REQUIRES: p is nullptr or points into this arena's data area.
  void* root() const;
  void set_root(void* p);

  bool contains(const void* p) const;
  size_t used_bytes() const { return used_bytes_; }  // allocated, rounded to classes
  size_t capacity() const;                           // bytes of the data area
  size_t footprint_bytes() const;                    // data pages ever handed out
  size_t allocations() const { return allocations_; }

  struct PageInfo;  // a page-map entry; layout private to src/alloc/

 private:
  struct ClassState {
    uint32_t partial;  // first slab of the class with a free block, 0 = none
    uint32_t reserved;
  };
  Arena() = default;
  static Status Validate(const Arena* a, void* base, size_t size);
  void Format(size_t size);
  uint64_t HeaderChecksum() const;

  std::byte* base() const { return reinterpret_cast<std::byte*>(const_cast<Arena*>(this)); }
  PageInfo* map() const;
  // The page-map entry of `page`, declared as written (spare/declare.h):
  // every change to the page map goes through it.
  PageInfo& Mut(uint32_t page);
  // Declares the mutable header state (root .. classes_) as written.
  void DeclareState();
  void* AllocateSmall(size_t cls);
  void FreeSmall(uint32_t page, uint64_t offset);
  void PushSlab(size_t cls, uint32_t head);
  void RemoveSlab(size_t cls, uint32_t head);
  void* AllocateLarge(size_t n, bool zero);
  uint32_t AllocPages(uint64_t npages);
  void FreePages(uint32_t page, uint64_t npages);
  void PushFreeRun(uint32_t page, uint64_t npages);
  void RemoveFreeRun(uint32_t page);
  uint32_t FreeRunEndingAt(uint32_t page) const;
  void TakeFromFreeRun(uint32_t page, uint64_t npages);

  // Immutable after Format(); covered by checksum_.
  uint64_t magic_;
  uint32_t version_;
  uint32_t header_bytes_;  // sizeof(Arena) when formatted
  uint64_t base_address_;  // where the arena was formatted
  uint64_t region_size_;
  uint64_t total_pages_;
  uint64_t data_page_;  // first page of the data area
  uint64_t checksum_;   // XXH64 of the fields above
  // Mutable state.
  uint64_t root_;             // offset of the root, 0 = none
  uint64_t bump_page_;        // pages >= this are unallocated (no free runs end here)
  uint64_t high_water_page_;  // pages >= this were never handed out: still zero
  uint64_t used_bytes_;
  uint64_t allocations_;
  uint32_t page_heads_[kPageBuckets];  // first free run per bucket, 0 = none
  ClassState classes_[kNumClasses];
};

// Aborts the process: an ArenaAllocator could not get memory (containers
// have no other way to report it; spare uses no exceptions).
[[noreturn]] void ArenaAllocatorExhausted(size_t bytes);

// An STL allocator over an Arena, for containers that must live in a
// region: place the container itself in the arena too, e.g.
//   using Vec = std::vector<int, spare::ArenaAllocator<int>>;
//   Vec* v = new (arena->allocate(sizeof(Vec))) Vec(spare::ArenaAllocator<int>(arena));
// Aborts when the arena is full: use it only where that is fatal anyway.
template <typename T>
class ArenaAllocator {
 public:
  using value_type = T;
  explicit ArenaAllocator(Arena* arena) noexcept : arena_(arena) {}
  template <typename U>
  ArenaAllocator(const ArenaAllocator<U>& other) noexcept : arena_(other.arena()) {}

  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) ArenaAllocatorExhausted(SIZE_MAX);
    size_t align = alignof(T) < Arena::kMinAlign ? Arena::kMinAlign : alignof(T);
    void* p = arena_->allocate(n * sizeof(T), align);
    if (p == nullptr) ArenaAllocatorExhausted(n * sizeof(T));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept { arena_->deallocate(p, n * sizeof(T)); }

  Arena* arena() const noexcept { return arena_; }
  template <typename U>
  bool operator==(const ArenaAllocator<U>& other) const noexcept {
    return arena_ == other.arena();
  }

 private:
  Arena* arena_;
};

}  // namespace spare
