#include "store.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "verified_region.h"

namespace kv {
namespace {

// A Store over an Arena in a declared region of an unprotected runtime
// (no agent), under write verification: every commit — in Reopen() and at
// the end of each test — checks that each byte the store and its arena
// changed was declared (spare/declare.h), as spare-kv needs.
class StoreTest : public ::testing::Test {
 protected:
  void Open(size_t size = 64 << 20) {
    size_ = size;
    spare::Status st = region_.Open(size);
    ASSERT_TRUE(st.ok()) << st.ToString();
    mem_ = region_.data();
    Reopen();
  }
  void Commit() {
    spare::Status st = region_.Commit();
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_GT(region_.pages_verified(), 0u);
  }
  void Reopen() {
    if (store_) Commit();
    auto arena = spare::Arena::Open(mem_, size_);
    ASSERT_TRUE(arena.ok()) << arena.status().ToString();
    arena_ = *arena;
    auto store = Store::Open(arena_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_.emplace(std::move(store).value());
  }
  void TearDown() override {
    if (region_.open()) Commit();
  }
  std::string GetOr(std::string_view key, int64_t now = 1000, std::string dflt = "<none>") {
    ValueRef v;
    return store_->Get(key, now, &v) ? std::string(v.data) : dflt;
  }

  VerifiedRegion region_;
  void* mem_ = nullptr;
  size_t size_ = 0;
  spare::Arena* arena_ = nullptr;
  std::optional<Store> store_;
};

TEST_F(StoreTest, SetGetDelete) {
  Open();
  EXPECT_EQ(GetOr("a"), "<none>");
  ASSERT_TRUE(store_->Set("a", "1", 0, 1000).ok());
  ASSERT_TRUE(store_->Set(std::string("b\0x", 3), std::string("v\0\r\n", 4), 0, 1000).ok());
  EXPECT_EQ(GetOr("a"), "1");
  EXPECT_EQ(GetOr(std::string("b\0x", 3)), std::string("v\0\r\n", 4));
  EXPECT_EQ(GetOr("b"), "<none>");
  EXPECT_EQ(store_->size(), 2u);
  EXPECT_TRUE(store_->Delete("a", 1000));
  EXPECT_FALSE(store_->Delete("a", 1000));
  EXPECT_EQ(GetOr("a"), "<none>");
  EXPECT_EQ(store_->size(), 1u);
}

TEST_F(StoreTest, OverwriteInPlaceWhenItFits) {
  Open();
  ASSERT_TRUE(store_->Set("k", "aaaa", 0, 1000).ok());
  ValueRef v;
  ASSERT_TRUE(store_->Get("k", 1000, &v));
  const char* where = v.data.data();
  ASSERT_TRUE(store_->Set("k", "bbbbb", 0, 1000).ok());
  ASSERT_TRUE(store_->Get("k", 1000, &v));
  EXPECT_EQ(v.data, "bbbbb");
  EXPECT_EQ(v.data.data(), where);  // same block
  std::string big(5000, 'x');
  ASSERT_TRUE(store_->Set("k", big, 0, 1000).ok());
  EXPECT_EQ(GetOr("k"), big);
  ASSERT_TRUE(store_->Set("k", "small", 0, 1000).ok());  // shrinks into a new block
  EXPECT_EQ(GetOr("k"), "small");
  EXPECT_EQ(store_->size(), 1u);
}

// Many keys: the table resizes incrementally many times; every key stays
// findable in the middle of each resize, and deletes during one work.
TEST_F(StoreTest, GrowsIncrementallyAndKeepsEveryKey) {
  Open(256 << 20);
  const int n = 200000;
  std::mt19937 rng(1);
  int resizing_seen = 0;
  for (int i = 0; i < n; ++i) {
    std::string k = "key:" + std::to_string(i);
    ASSERT_TRUE(store_->Set(k, "v" + std::to_string(i), 0, 1000).ok());
    if (store_->stats().resizing) {
      ++resizing_seen;
      int j = static_cast<int>(rng() % (i + 1));
      std::string kj = "key:" + std::to_string(j);
      if (j % 7 == 0) {
        // Delete and re-insert in the middle of a resize.
        ASSERT_TRUE(store_->Delete(kj, 1000)) << j;
        ASSERT_EQ(GetOr(kj), "<none>");
        ASSERT_TRUE(store_->Set(kj, "v" + std::to_string(j), 0, 1000).ok());
      }
      ASSERT_EQ(GetOr(kj), "v" + std::to_string(j)) << j;
    }
  }
  EXPECT_GT(resizing_seen, 1000);
  while (store_->ResizeStep(1000)) {
  }
  EXPECT_EQ(store_->size(), static_cast<uint64_t>(n));
  EXPECT_GE(store_->stats().table_slots * 3, static_cast<uint64_t>(n) * 4 / 2);
  for (int i = 0; i < n; i += 2) ASSERT_TRUE(store_->Delete("key:" + std::to_string(i), 1000));
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(GetOr("key:" + std::to_string(i)), i % 2 ? "v" + std::to_string(i) : "<none>");
  }
  EXPECT_EQ(store_->size(), static_cast<uint64_t>(n / 2));
}

TEST_F(StoreTest, LazyAndActiveExpiry) {
  Open();
  ASSERT_TRUE(store_->Set("short", "1", 2000, 1000).ok());
  ASSERT_TRUE(store_->Set("long", "2", 9000, 1000).ok());
  ASSERT_TRUE(store_->Set("forever", "3", 0, 1000).ok());
  EXPECT_EQ(store_->stats().volatile_keys, 2u);
  EXPECT_EQ(GetOr("short", 1999), "1");
  EXPECT_EQ(GetOr("short", 2000), "<none>");  // lazily deleted
  EXPECT_EQ(store_->size(), 2u);
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(store_->Set("t" + std::to_string(i), "x", 5000, 1000).ok());
  size_t swept = 0;
  for (int round = 0; round < 100; ++round) swept += store_->SweepExpired(6000, 16);
  EXPECT_EQ(swept, 100u);
  EXPECT_EQ(store_->size(), 2u);
  EXPECT_EQ(store_->stats().volatile_keys, 1u);
  EXPECT_EQ(store_->stats().expired_keys, 101u);
  EXPECT_EQ(GetOr("long", 6000), "2");
  EXPECT_EQ(GetOr("forever", 99999999), "3");
}

TEST_F(StoreTest, KeepTtlAndSetExpire) {
  Open();
  ASSERT_TRUE(store_->Set("k", "1", 5000, 1000).ok());
  ASSERT_TRUE(store_->Set("k", "2", 0, 1000, /*keep_ttl=*/true).ok());
  ValueRef v;
  ASSERT_TRUE(store_->Get("k", 1000, &v));
  EXPECT_EQ(v.expire_ms, 5000);
  ASSERT_TRUE(store_->Set("k", "3", 0, 1000).ok());  // plain SET clears the TTL
  ASSERT_TRUE(store_->Get("k", 1000, &v));
  EXPECT_EQ(v.expire_ms, 0);
  EXPECT_TRUE(store_->SetExpire("k", 3000, 1000));
  EXPECT_EQ(store_->stats().volatile_keys, 1u);
  // An expired key is absent: KEEPTTL does not resurrect its expiry.
  ASSERT_TRUE(store_->Set("k", "4", 0, 4000, /*keep_ttl=*/true).ok());
  ASSERT_TRUE(store_->Get("k", 4000, &v));
  EXPECT_EQ(v.expire_ms, 0);
  EXPECT_EQ(store_->stats().volatile_keys, 0u);
  EXPECT_FALSE(store_->SetExpire("missing", 3000, 1000));
}

TEST_F(StoreTest, FullArenaChangesNothing) {
  Open(spare::Arena::kMinRegionSize * 4);
  int n = 0;
  std::string value(100, 'v');
  while (store_->Set("k" + std::to_string(n), value, 0, 1000).ok()) ++n;
  ASSERT_GT(n, 10);
  const uint64_t size = store_->size(), used = arena_->used_bytes();
  std::string huge(200000, 'h');
  std::vector<std::pair<std::string_view, std::string_view>> pairs = {
      {"k0", "changed"}, {"new", "x"}, {"k1", huge}};
  EXPECT_EQ(store_->SetMany(pairs).code(), spare::Code::kResourceExhausted);
  EXPECT_EQ(store_->Set("k2", huge, 0, 1000).code(), spare::Code::kResourceExhausted);
  EXPECT_EQ(store_->size(), size);
  EXPECT_EQ(arena_->used_bytes(), used);
  EXPECT_EQ(GetOr("k0"), value);
  EXPECT_EQ(GetOr("k2"), value);
  EXPECT_EQ(GetOr("new"), "<none>");
  // Deleting makes room again, for any size (empty slabs return to pages).
  for (int i = 0; i < n; ++i) ASSERT_TRUE(store_->Delete("k" + std::to_string(i), 1000));
  EXPECT_TRUE(store_->SetMany(pairs).ok());
  EXPECT_EQ(GetOr("k0"), "changed");
  EXPECT_EQ(GetOr("new"), "x");
  EXPECT_EQ(GetOr("k1"), huge);
}

TEST_F(StoreTest, ReopenFindsTheSameKeyspace) {
  Open();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(store_->Set("k" + std::to_string(i), "v", 0, 1).ok());
  store_.reset();
  Reopen();
  EXPECT_EQ(store_->size(), 1000u);
  EXPECT_EQ(GetOr("k999"), "v");
}

TEST_F(StoreTest, ClearEmptiesEverything) {
  Open();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(store_->Set("k" + std::to_string(i), "v", 0, 1).ok());
  store_->Clear();
  EXPECT_EQ(store_->size(), 0u);
  EXPECT_EQ(GetOr("k1"), "<none>");
  ASSERT_TRUE(store_->Set("a", "b", 0, 1).ok());
  store_.reset();
  Reopen();
  EXPECT_EQ(GetOr("a"), "b");
  EXPECT_EQ(store_->size(), 1u);
}

TEST_F(StoreTest, ReadsDoNotMutate) {
  Open();
  ASSERT_TRUE(store_->Set("a", "b", 0, 1).ok());
  uint64_t m = store_->mutations();
  GetOr("a");
  GetOr("missing");
  EXPECT_EQ(store_->mutations(), m);
  ASSERT_TRUE(store_->Set("a", "c", 0, 1).ok());
  EXPECT_GT(store_->mutations(), m);
}

TEST_F(StoreTest, RefusesAForeignRoot) {
  Open();
  void* junk = arena_->allocate(256);
  std::memset(junk, 0x5A, 256);
  arena_->set_root(junk);
  auto store = Store::Open(arena_);
  EXPECT_EQ(store.status().code(), spare::Code::kBadMessage);
}

}  // namespace
}  // namespace kv
