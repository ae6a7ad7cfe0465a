// store.h — spare-kv's keyspace: a hash table whose every byte is in an Arena.
//
// Keys and values are binary strings. Each key is one arena block (a small
// header, the key bytes, the value bytes). The table is open addressing
// with linear probing; its slots hold the entry pointer tagged with 16 bits
// of the key's hash. It grows by doubling, incrementally: while a resize is
// under way lookups consult both tables and every write (and the server's
// idle time) moves a few old slots over. A resize writes only the new
// table, never the entries, so it dirties few pages.
//
// Expiry: per key, an absolute CLOCK_REALTIME time in ms. An expired key is
// deleted when it is next looked up (lazy) and by SweepExpired(), which the
// server calls periodically to reclaim keys nobody reads.
//
// The table's root is the arena root, so after a restart Open() finds the
// same keyspace at the same address. All arena memory belongs to the store
// (Clear() resets the whole arena).
//
// Threading: one thread, the server's event loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

#include "spare/alloc.h"
#include "spare/status.h"

namespace kv {

struct StoreRoot;
struct Entry;

struct StoreStats {
  uint64_t keys = 0;           // including expired keys not reclaimed yet
  uint64_t volatile_keys = 0;  // keys with an expiry
  uint64_t table_slots = 0;    // slots of the current table
  bool resizing = false;
  uint64_t expired_keys = 0;    // keys reclaimed by expiry since the store was created
  uint64_t used_bytes = 0;      // arena bytes in use
  uint64_t capacity_bytes = 0;  // arena bytes in all
};

// A key's value as stored: `data` is valid until the next call that may
// change the store (any non-const call).
struct ValueRef {
  std::string_view data;
  int64_t expire_ms = 0;  // 0: no expiry
};

class Store {
 public:
  // Finds the store at the arena's root, or creates it in an empty arena.
  // kBadMessage if the root is not a store of this version.
  static spare::Result<Store> Open(spare::Arena* arena);

  // Lookup; deletes the key first if it expired at now_ms.
  bool Get(std::string_view key, int64_t now_ms, ValueRef* out);
  bool Exists(std::string_view key, int64_t now_ms) { return Get(key, now_ms, nullptr); }

  // Inserts or replaces key. expire_ms: absolute time, 0 = no expiry;
  // keep_ttl keeps the expiry of a live existing key instead.
  // kResourceExhausted when the arena is full (the store is then unchanged).
  spare::Status Set(std::string_view key, std::string_view value, int64_t expire_ms, int64_t now_ms,
                    bool keep_ttl = false);
  // All pairs or none (kResourceExhausted leaves the store unchanged).
  spare::Status SetMany(std::span<const std::pair<std::string_view, std::string_view>> pairs);
  // Sets only the expiry of an existing key (0 removes it). False if absent.
  bool SetExpire(std::string_view key, int64_t expire_ms, int64_t now_ms);
  // True if the key existed (and had not expired).
  bool Delete(std::string_view key, int64_t now_ms);
  // Removes every key (FLUSHALL). Resets the arena.
  void Clear();

  // Makes sure n more keys can be inserted without failing for table space.
  spare::Status Reserve(size_t n);
  // Deletes expired keys among the next max_slots slots of the table;
  // returns how many it deleted.
  size_t SweepExpired(int64_t now_ms, size_t max_slots);
  // Moves up to max_slots slots of an ongoing resize; true while one remains.
  bool ResizeStep(size_t max_slots);

  uint64_t size() const;
  StoreStats stats() const;
  // Counts every change to the arena made by this process (writes, lazy
  // expiry, resize steps): unchanged means nothing to commit.
  uint64_t mutations() const { return mutations_; }

 private:
  struct Slot;
  Store(spare::Arena* arena, StoreRoot* root) : arena_(arena), root_(root) {}
  static spare::Result<StoreRoot*> Create(spare::Arena* arena);
  uint64_t Hash(std::string_view key) const;
  bool Find(std::string_view key, uint64_t hash, Slot* out) const;
  Entry* NewEntry(std::string_view key, uint64_t hash, std::string_view value, int64_t expire_ms);
  void Install(const Slot& where, Entry* e);  // replaces *where, or inserts
  void Remove(const Slot& where);
  void FreeEntry(Entry* e);
  bool Expired(const Entry* e, int64_t now_ms) const;
  void StartResize(uint64_t min_slots);

  spare::Arena* arena_;
  StoreRoot* root_;
  uint64_t mutations_ = 0;
};

}  // namespace kv
