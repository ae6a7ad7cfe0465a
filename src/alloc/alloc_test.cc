#include "spare/alloc.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <random>
#include <vector>

namespace spare {
namespace {

constexpr size_t kMiB = 1 << 20;

// An anonymous, all-zero mapping standing in for a fresh region.
class Mapping {
 public:
  explicit Mapping(size_t size, void* at = nullptr) : size_(size) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (at ? MAP_FIXED_NOREPLACE : 0);
    void* p = mmap(at, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    data_ = static_cast<std::byte*>(p);
  }
  ~Mapping() { munmap(data_, size_); }
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::byte* data_;
};

Arena* OpenOk(void* base, size_t size) {
  auto a = Arena::Open(base, size);
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  return a.ok() ? *a : nullptr;
}

TEST(ArenaTest, FormatsFreshRegion) {
  Mapping m(4 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(static_cast<void*>(a), m.data());
  EXPECT_EQ(a->used_bytes(), 0u);
  EXPECT_EQ(a->root(), nullptr);
  EXPECT_GT(a->capacity(), 3 * kMiB);
  EXPECT_LT(a->capacity(), m.size());
}

TEST(ArenaTest, FreedBlocksAreReused) {
  Mapping m(4 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  void* p = a->allocate(100);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(a->contains(p));
  EXPECT_EQ(a->usable_size(p), 112u);
  EXPECT_EQ(a->used_bytes(), 112u);
  a->deallocate(p);
  EXPECT_EQ(a->used_bytes(), 0u);
  EXPECT_EQ(a->allocate(97), p);  // same class, LIFO free list

  void* big = a->allocate(100000);
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(a->usable_size(big), 25u * 4096);
  a->deallocate(big, 100000);
  EXPECT_EQ(a->allocate(99000), big);
}

TEST(ArenaTest, HonoursAlignment) {
  Mapping m(16 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  for (size_t align = 1; align <= Arena::kMaxAlign; align *= 2) {
    for (size_t n : {1, 15, 17, 100, 129, 1000, 3000, 5000, 8192, 9000, 70000}) {
      auto p = reinterpret_cast<uintptr_t>(a->allocate(n, align));
      ASSERT_NE(p, 0u) << n << " " << align;
      EXPECT_EQ(p % std::max<size_t>(align, 16), 0u) << n << " " << align;
      EXPECT_GE(a->usable_size(reinterpret_cast<void*>(p)), n);
    }
  }
  EXPECT_EQ(a->allocate(16, 3), nullptr);
  EXPECT_EQ(a->allocate(16, 2 * Arena::kMaxAlign), nullptr);
}

TEST(ArenaTest, ExhaustionReturnsNullAndRecovers) {
  Mapping m(Arena::kMinRegionSize);
  Arena* a = OpenOk(m.data(), m.size());
  EXPECT_EQ(a->allocate(a->capacity() + 1), nullptr);
  EXPECT_EQ(a->allocate(SIZE_MAX), nullptr);
  std::vector<void*> blocks;
  while (void* p = a->allocate(1000)) blocks.push_back(p);
  EXPECT_FALSE(blocks.empty());
  EXPECT_LE(a->used_bytes(), a->capacity());
  std::vector<void*> large;  // fewer than a slab's pages may be left
  while (void* p = a->allocate(20000)) large.push_back(p);
  EXPECT_EQ(a->allocate(20000), nullptr);
  for (void* p : large) a->deallocate(p);
  void* last = blocks.back();
  a->deallocate(last);
  EXPECT_EQ(a->allocate(1000), last);
  for (void* p : blocks) a->deallocate(p);
  EXPECT_EQ(a->used_bytes(), 0u);
}

// Memory freed in one size class serves other classes and large blocks:
// empty slabs go back to the page allocator.
TEST(ArenaTest, EmptySlabsReturnToThePages) {
  Mapping m(8 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  std::vector<void*> small;
  while (void* p = a->allocate(48)) small.push_back(p);
  ASSERT_GT(small.size(), 100000u);
  for (void* p : small) a->deallocate(p);
  EXPECT_EQ(a->used_bytes(), 0u);
  // All but one slab (64 KiB) is a page run again.
  void* big = a->allocate(a->capacity() - 64 * 1024);
  ASSERT_NE(big, nullptr);
  a->deallocate(big);
  std::vector<void*> other;
  while (void* p = a->allocate(1000)) other.push_back(p);
  EXPECT_GT(other.size() * 1024, a->capacity() * 9 / 10);
}

// One block allocated and freed in turn keeps its slab (no churn).
TEST(ArenaTest, LastSlabOfAClassIsKept) {
  Mapping m(4 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  void* p = a->allocate(100);
  for (int i = 0; i < 1000; ++i) {
    a->deallocate(p);
    ASSERT_EQ(a->allocate(100), p);
  }
  EXPECT_EQ(a->footprint_bytes(), 64u * 1024);
}

TEST(ArenaTest, LargeRunsCoalesce) {
  Mapping m(16 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  void* keep = a->allocate(16);  // a slab below the runs
  auto* p1 = static_cast<std::byte*>(a->allocate(3 * 4096));
  auto* p2 = static_cast<std::byte*>(a->allocate(5 * 4096));
  auto* p3 = static_cast<std::byte*>(a->allocate(4 * 4096));
  auto* p4 = static_cast<std::byte*>(a->allocate(9 * 4096));
  EXPECT_EQ(p2, p1 + 3 * 4096);
  EXPECT_EQ(p3, p2 + 5 * 4096);
  a->deallocate(p1);
  a->deallocate(p3);
  a->deallocate(p2);  // merges with both neighbours: 12 pages free at p1
  EXPECT_EQ(a->allocate(12 * 4096), p1);
  a->deallocate(p1);
  a->deallocate(p4);  // run at the top returns to the bump pointer, with p1's run
  EXPECT_EQ(a->allocate(21 * 4096), p1);
  a->deallocate(keep);
}

TEST(ArenaTest, RandomOperationsKeepBlocksDisjoint) {
  Mapping m(64 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  std::mt19937_64 rng(42);
  std::map<std::byte*, std::pair<size_t, uint8_t>> live;  // block -> (size, fill)
  size_t expect_used = 0;
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || (live.size() < 400 && rng() % 2 == 0)) {
      size_t n = rng() % 4 == 0 ? 1 + rng() % 200000 : 1 + rng() % 2000;
      auto* p = static_cast<std::byte*>(a->allocate(n, size_t{1} << (rng() % 7)));
      ASSERT_NE(p, nullptr);
      auto fill = static_cast<uint8_t>(rng());
      std::memset(p, fill, n);
      live[p] = {n, fill};
      expect_used += a->usable_size(p);
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      for (size_t k = 0; k < it->second.first; ++k)
        ASSERT_EQ(static_cast<uint8_t>(it->first[k]), it->second.second);
      expect_used -= a->usable_size(it->first);
      a->deallocate(it->first, it->second.first);
      live.erase(it);
    }
    ASSERT_EQ(a->used_bytes(), expect_used);
  }
  std::byte* prev_end = nullptr;
  for (auto& [p, info] : live) {
    EXPECT_GE(p, prev_end);
    prev_end = p + info.first;
    for (size_t k = 0; k < info.first; ++k) ASSERT_EQ(static_cast<uint8_t>(p[k]), info.second);
  }
  EXPECT_EQ(a->allocations(), live.size());
}

// The same operations on arenas at different bases give the same offsets.
TEST(ArenaTest, DeterministicOffsets) {
  Mapping m1(32 * kMiB), m2(32 * kMiB);
  ASSERT_NE(m1.data(), m2.data());
  auto run = [](Arena* a, std::byte* base) {
    std::vector<uint64_t> offsets;
    std::vector<void*> live;
    std::mt19937 rng(7);
    for (int i = 0; i < 5000; ++i) {
      if (!live.empty() && rng() % 3 == 0) {
        size_t k = rng() % live.size();
        a->deallocate(live[k]);
        live.erase(live.begin() + k);
      } else {
        void* p = a->allocate(rng() % 5 == 0 ? rng() % 100000 : rng() % 3000);
        live.push_back(p);
        offsets.push_back(static_cast<std::byte*>(p) - base);
      }
    }
    return offsets;
  };
  auto o1 = run(OpenOk(m1.data(), m1.size()), m1.data());
  auto o2 = run(OpenOk(m2.data(), m2.size()), m2.data());
  EXPECT_EQ(o1, o2);
}

struct Node {
  Node* next;
  int value;
};

// A restart: the region is unmapped and mapped again at the same address.
TEST(ArenaTest, ReopenKeepsContentsAndRoot) {
  const size_t size = 8 * kMiB;
  int fd = memfd_create("arena_test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, size), 0);
  void* at = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(at, MAP_FAILED);
  {
    Arena* a = OpenOk(at, size);
    Node* head = nullptr;
    for (int i = 0; i < 100; ++i) head = new (a->allocate(sizeof(Node))) Node{head, i};
    a->set_root(head);
  }
  ASSERT_EQ(munmap(at, size), 0);
  void* again = mmap(at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
  ASSERT_EQ(again, at);
  Arena* a = OpenOk(at, size);
  int expect = 99, count = 0;
  for (auto* n = static_cast<Node*>(a->root()); n != nullptr; n = n->next, --expect, ++count)
    EXPECT_EQ(n->value, expect);
  EXPECT_EQ(count, 100);
  EXPECT_EQ(a->allocations(), 100u);
  // New allocations do not overlap the old ones.
  auto* fresh = static_cast<Node*>(a->allocate(sizeof(Node)));
  for (auto* n = static_cast<Node*>(a->root()); n != nullptr; n = n->next) EXPECT_NE(n, fresh);
  munmap(at, size);
  close(fd);
}

TEST(ArenaTest, RefusesBadHeadersAndChangesNothing) {
  Mapping m(4 * kMiB);
  OpenOk(m.data(), m.size())->set_root(nullptr);
  std::vector<std::byte> pristine(m.data(), m.data() + 4096);
  auto expect_refused = [&](Code code, const char* text, size_t size) {
    std::vector<std::byte> before(m.data(), m.data() + 4096);
    auto r = Arena::Open(m.data(), size);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status().ToString();
    EXPECT_EQ(std::memcmp(before.data(), m.data(), 4096), 0);
    std::memcpy(m.data(), pristine.data(), 4096);
  };
  m.data()[0] ^= std::byte{1};
  expect_refused(Code::kBadMessage, "not an arena", m.size());
  m.data()[8] = std::byte{9};  // version
  expect_refused(Code::kUnsupported, "version 9", m.size());
  m.data()[24] ^= std::byte{0x80};  // region size, under the checksum
  expect_refused(Code::kBadMessage, "checksum", m.size());
  expect_refused(Code::kInvalidArgument, "formatted for", m.size() - 4096);
  uint64_t bump = 1;  // mutable state: bump page inside the page map
  std::memcpy(m.data() + 64, &bump, sizeof bump);
  expect_refused(Code::kBadMessage, "corrupt state", m.size());
  EXPECT_TRUE(Arena::Open(m.data(), m.size()).ok());

  // Bytes of a valid arena seen at another address.
  Mapping other(4 * kMiB);
  std::memcpy(other.data(), m.data(), 4096);
  auto moved = Arena::Open(other.data(), other.size());
  EXPECT_EQ(moved.status().code(), Code::kFailedPrecondition) << moved.status().ToString();

  EXPECT_EQ(Arena::Open(m.data() + 16, m.size()).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(Arena::Open(m.data(), 64 * 1024).status().code(), Code::kInvalidArgument);
}

// A commit ships every page written: the arena must not touch data pages
// it does not need.
TEST(ArenaTest, TouchesFewPages) {
  Mapping m(1024 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  auto resident = [&] {
    std::vector<unsigned char> vec(m.size() / 4096);
    EXPECT_EQ(mincore(m.data(), m.size(), vec.data()), 0);
    size_t n = 0;
    for (unsigned char c : vec) n += c & 1;
    return n;
  };
  void* big = a->allocate(256 * kMiB);
  void* zeroed = a->allocate_zeroed(64 * kMiB);
  ASSERT_NE(big, nullptr);
  ASSERT_NE(zeroed, nullptr);
  for (int i = 0; i < 1000; ++i) ASSERT_NE(a->allocate(48), nullptr);  // < 1 slab
  EXPECT_LE(resident(), 40u);
  a->deallocate(big);
  EXPECT_LE(resident(), 40u);
}

TEST(ArenaTest, AllocateZeroedClearsReusedMemory) {
  Mapping m(4 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  for (size_t n : {40, 20000}) {
    void* p = a->allocate(n);
    std::memset(p, 0xAB, n);
    a->deallocate(p);
    auto* z = static_cast<unsigned char*>(a->allocate_zeroed(n));
    ASSERT_EQ(static_cast<void*>(z), p);
    for (size_t k = 0; k < n; ++k) ASSERT_EQ(z[k], 0) << k;
  }
}

TEST(ArenaTest, ResetFreesEverything) {
  Mapping m(4 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  void* first = a->allocate(30);
  for (int i = 0; i < 500; ++i) a->allocate(i * 37);
  a->set_root(first);
  a->Reset();
  EXPECT_EQ(a->used_bytes(), 0u);
  EXPECT_EQ(a->allocations(), 0u);
  EXPECT_EQ(a->root(), nullptr);
  EXPECT_EQ(a->allocate(30), first);
  void* big = a->allocate(3 * a->capacity() / 4);  // fits again
  EXPECT_NE(big, nullptr);
}

TEST(ArenaTest, StlAllocatorAdapter) {
  Mapping m(8 * kMiB);
  Arena* a = OpenOk(m.data(), m.size());
  using Vec = std::vector<int, ArenaAllocator<int>>;
  Vec* v = new (a->allocate(sizeof(Vec))) Vec(ArenaAllocator<int>(a));
  for (int i = 0; i < 10000; ++i) v->push_back(i);
  EXPECT_TRUE(a->contains(v->data()));
  EXPECT_EQ((*v)[9999], 9999);
  using Map = std::map<int, int, std::less<int>, ArenaAllocator<std::pair<const int, int>>>;
  Map* mp = new (a->allocate(sizeof(Map))) Map(ArenaAllocator<std::pair<const int, int>>(a));
  for (int i = 0; i < 100; ++i) (*mp)[i] = i * i;
  EXPECT_EQ(mp->at(7), 49);
  v->~Vec();
  mp->~Map();
  a->deallocate(v);
  a->deallocate(mp);
  EXPECT_EQ(a->used_bytes(), 0u);
}

}  // namespace
}  // namespace spare
