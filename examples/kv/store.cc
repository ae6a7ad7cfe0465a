// store.cc — the keyspace hash table (see store.h).
#include "store.h"

#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "spare/declare.h"

namespace kv {
namespace {

constexpr uint64_t kStoreMagic = 0x3156524F54535653ULL;  // "SVSTORV1"
constexpr uint32_t kStoreVersion = 1;
constexpr uint64_t kMinSlots = 64;
constexpr uint64_t kEmpty = 0;
constexpr uint64_t kTombstone = 1;  // only in the table being resized away
constexpr uint64_t kPtrMask = (uint64_t{1} << 48) - 1;
constexpr size_t kStepSlots = 64;  // resize work per write

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "spare-kv: store invariant broken: %s\n", what);
  std::abort();
}

}  // namespace

// One key: header, then key bytes, then value bytes, in one arena block.
struct Entry {
  uint64_t hash;
  int64_t expire_ms;  // 0: none
  uint32_t klen;
  uint32_t vlen;

  char* bytes() { return reinterpret_cast<char*>(this + 1); }
  const char* bytes() const { return reinterpret_cast<const char*>(this + 1); }
  std::string_view key() const { return {bytes(), klen}; }
  std::string_view value() const { return {bytes() + klen, vlen}; }
};

// A table of tagged slots: (hash >> 48) << 48 | entry address.
struct Table {
  uint64_t* slots;
  uint64_t mask;  // slot count - 1 (a power of two)
  uint64_t used;  // live entries
};

// The arena root.
struct StoreRoot {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved;
  uint64_t seed;         // hash seed, chosen once when the store is created
  Table main;            // where inserts go
  Table old;             // the table being resized away (slots == nullptr: none)
  uint64_t migrate_pos;  // old slots below this were moved to main
  uint64_t volatile_keys;
  uint64_t sweep_pos;
  uint64_t expired_keys;
};

struct Store::Slot {
  Table* table = nullptr;
  uint64_t index = 0;
  Entry* entry = nullptr;
  uint64_t insert_index = 0;  // when not found: where to insert in main
};

namespace {
Entry* EntryOf(uint64_t slot) { return reinterpret_cast<Entry*>(slot & kPtrMask); }
uint64_t MakeSlot(const Entry* e) { return (e->hash & ~kPtrMask) | reinterpret_cast<uintptr_t>(e); }
bool TagMatches(uint64_t slot, uint64_t hash) { return ((slot ^ hash) & ~kPtrMask) == 0; }

// Every in-place write of the store is declared (spare/declare.h), so a
// region mapped with WriteTracking::kDeclared ships exactly these bytes;
// new entries and tables are declared by the arena that hands them out.
void SetSlot(Table& t, uint64_t i, uint64_t value) {
  t.slots[i] = value;
  spare::DeclareWrite(t.slots[i]);
}

// Index of the first empty slot on hash's probe path in t.
uint64_t ProbeEmpty(const Table& t, uint64_t hash) {
  uint64_t i = hash & t.mask;
  while (t.slots[i] != kEmpty) i = (i + 1) & t.mask;
  return i;
}
}  // namespace

spare::Result<StoreRoot*> Store::Create(spare::Arena* arena) {
  auto* root = static_cast<StoreRoot*>(arena->allocate_zeroed(sizeof(StoreRoot)));
  auto* slots = static_cast<uint64_t*>(arena->allocate_zeroed(kMinSlots * sizeof(uint64_t)));
  if (root == nullptr || slots == nullptr) {
    return spare::Status(spare::Code::kResourceExhausted, "arena too small for an empty store");
  }
  root->magic = kStoreMagic;
  root->version = kStoreVersion;
  if (getrandom(&root->seed, sizeof root->seed, 0) != sizeof root->seed) {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    root->seed = uint64_t(ts.tv_sec) * 1000000007ULL ^ uint64_t(ts.tv_nsec);
  }
  root->main = {slots, kMinSlots - 1, 0};
  arena->set_root(root);
  return root;
}

spare::Result<Store> Store::Open(spare::Arena* arena) {
  auto* root = static_cast<StoreRoot*>(arena->root());
  if (root == nullptr) {
    SPARE_ASSIGN_OR_RETURN(root, Create(arena));
    return Store(arena, root);
  }
  if (root->magic != kStoreMagic || root->version != kStoreVersion) {
    return spare::Status(
        spare::Code::kBadMessage,
        "the arena root is not a spare-kv store of version " + std::to_string(kStoreVersion));
  }
  auto table_ok = [&](const Table& t) {
    return t.slots == nullptr || (arena->contains(t.slots) && ((t.mask + 1) & t.mask) == 0);
  };
  if (root->main.slots == nullptr || !table_ok(root->main) || !table_ok(root->old)) {
    return spare::Status(spare::Code::kBadMessage, "spare-kv store root: corrupt table");
  }
  return Store(arena, root);
}

uint64_t Store::Hash(std::string_view key) const {
  return XXH3_64bits_withSeed(key.data(), key.size(), root_->seed);
}

uint64_t Store::size() const { return root_->main.used + root_->old.used; }

bool Store::Expired(const Entry* e, int64_t now_ms) const {
  return e->expire_ms != 0 && e->expire_ms <= now_ms;
}

bool Store::Find(std::string_view key, uint64_t hash, Slot* out) const {
  Table& m = root_->main;
  uint64_t i = hash & m.mask;
  for (uint64_t s; (s = m.slots[i]) != kEmpty; i = (i + 1) & m.mask) {
    if (!TagMatches(s, hash)) continue;
    Entry* e = EntryOf(s);
    if (e->hash == hash && e->key() == key) {
      *out = {&m, i, e, 0};
      return true;
    }
  }
  out->entry = nullptr;
  out->insert_index = i;
  Table& o = root_->old;
  if (o.slots == nullptr) return false;
  // Old slots below migrate_pos moved to main (and may be stale since):
  // never dereferenced. Tombstones keep the probe chains intact.
  uint64_t j = hash & o.mask;
  for (uint64_t s; (s = o.slots[j]) != kEmpty; j = (j + 1) & o.mask) {
    if (s == kTombstone || j < root_->migrate_pos || !TagMatches(s, hash)) continue;
    Entry* e = EntryOf(s);
    if (e->hash == hash && e->key() == key) {
      *out = {&o, j, e, 0};
      return true;
    }
  }
  return false;
}

Entry* Store::NewEntry(std::string_view key, uint64_t hash, std::string_view value,
                       int64_t expire_ms) {
  if (key.size() > UINT32_MAX || value.size() > UINT32_MAX) return nullptr;
  auto* e = static_cast<Entry*>(arena_->allocate(sizeof(Entry) + key.size() + value.size()));
  if (e == nullptr) return nullptr;
  if ((reinterpret_cast<uintptr_t>(e) & ~kPtrMask) != 0) Die("entry above 2^48");
  e->hash = hash;
  e->expire_ms = expire_ms;
  e->klen = uint32_t(key.size());
  e->vlen = uint32_t(value.size());
  std::memcpy(e->bytes(), key.data(), key.size());
  std::memcpy(e->bytes() + key.size(), value.data(), value.size());
  return e;
}

void Store::Install(const Slot& where, Entry* e) {
  spare::DeclareWrite(*root_);
  if (e->expire_ms != 0) ++root_->volatile_keys;
  if (where.entry != nullptr) {
    if (where.entry->expire_ms != 0) --root_->volatile_keys;
    SetSlot(*where.table, where.index, MakeSlot(e));
    return;
  }
  Table& m = root_->main;
  if (m.slots[where.insert_index] != kEmpty) Die("insert slot taken");
  SetSlot(m, where.insert_index, MakeSlot(e));
  ++m.used;
}

void Store::Remove(const Slot& where) {
  spare::DeclareWrite(*root_);
  if (where.entry->expire_ms != 0) --root_->volatile_keys;
  Table& t = *where.table;
  --t.used;
  if (&t == &root_->old) {
    SetSlot(t, where.index, kTombstone);
    return;
  }
  // Backward-shift deletion: main never holds tombstones.
  uint64_t hole = where.index, j = hole;
  while (true) {
    j = (j + 1) & t.mask;
    uint64_t s = t.slots[j];
    if (s == kEmpty) break;
    uint64_t home = EntryOf(s)->hash & t.mask;
    if (((j - home) & t.mask) >= ((j - hole) & t.mask)) {
      SetSlot(t, hole, s);
      hole = j;
    }
  }
  SetSlot(t, hole, kEmpty);
}

void Store::FreeEntry(Entry* e) { arena_->deallocate(e); }

void Store::StartResize(uint64_t min_slots) {
  if (root_->old.slots != nullptr) ResizeStep(UINT64_MAX);  // finish the current one
  const Table& m = root_->main;
  uint64_t cap = (m.mask + 1) * 2;
  while (cap * 3 < min_slots * 4) cap *= 2;
  auto* slots = static_cast<uint64_t*>(arena_->allocate_zeroed(cap * sizeof(uint64_t)));
  if (slots == nullptr) return;  // keep going in the current table
  spare::DeclareWrite(*root_);
  root_->old = root_->main;
  root_->main = {slots, cap - 1, 0};
  root_->migrate_pos = 0;
  ++mutations_;
}

bool Store::ResizeStep(size_t max_slots) {
  Table& o = root_->old;
  if (o.slots == nullptr) return false;
  spare::DeclareWrite(*root_);
  Table& m = root_->main;
  uint64_t end = o.mask + 1;
  if (max_slots < end - root_->migrate_pos) end = root_->migrate_pos + max_slots;
  for (uint64_t& pos = root_->migrate_pos; pos < end; ++pos) {
    uint64_t s = o.slots[pos];
    if (s == kEmpty || s == kTombstone) continue;
    SetSlot(m, ProbeEmpty(m, EntryOf(s)->hash), s);
    ++m.used;
    --o.used;
  }
  ++mutations_;
  if (root_->migrate_pos <= o.mask) return true;
  if (o.used != 0) Die("resize left entries behind");
  arena_->deallocate(o.slots);
  o = {nullptr, 0, 0};
  root_->migrate_pos = 0;
  return false;
}

spare::Status Store::Reserve(size_t n) {
  if (n > arena_->capacity() / sizeof(Entry)) {  // cannot fit, whatever the table
    return spare::Status(spare::Code::kResourceExhausted, "not enough memory for the keys");
  }
  const uint64_t total = size() + n;
  const uint64_t cap = root_->main.mask + 1;
  if (total * 4 <= cap * 3) return spare::Status::Ok();
  StartResize(total);
  const uint64_t new_cap = root_->main.mask + 1;
  if (total * 4 <= new_cap * 3) return spare::Status::Ok();
  if (total * 16 <= new_cap * 15) return spare::Status::Ok();  // crowded but correct
  return spare::Status(spare::Code::kResourceExhausted, "no memory to grow the key table");
}

bool Store::Get(std::string_view key, int64_t now_ms, ValueRef* out) {
  Slot s;
  if (!Find(key, Hash(key), &s)) return false;
  if (Expired(s.entry, now_ms)) {
    Remove(s);
    FreeEntry(s.entry);
    ++root_->expired_keys;  // Remove() declared the root
    ++mutations_;
    return false;
  }
  if (out != nullptr) *out = {s.entry->value(), s.entry->expire_ms};
  return true;
}

spare::Status Store::Set(std::string_view key, std::string_view value, int64_t expire_ms,
                         int64_t now_ms, bool keep_ttl) {
  ResizeStep(kStepSlots);
  SPARE_RETURN_IF_ERROR(Reserve(1));
  const uint64_t hash = Hash(key);
  Slot s;
  bool found = Find(key, hash, &s);
  if (found && Expired(s.entry, now_ms)) {
    spare::DeclareWrite(root_->expired_keys);
    ++root_->expired_keys;  // replaced below; its expiry is not kept
  } else if (found && keep_ttl) {
    expire_ms = s.entry->expire_ms;
  }
  if (found) {
    Entry* e = s.entry;
    // Same block if it fits and does not waste more than half of it: only
    // the entry's own pages get dirty.
    size_t need = sizeof(Entry) + key.size() + value.size();
    size_t usable = arena_->usable_size(e);
    if (need <= usable && (usable <= 256 || need * 2 >= usable)) {
      std::memcpy(e->bytes() + e->klen, value.data(), value.size());
      e->vlen = uint32_t(value.size());
      if ((expire_ms != 0) != (e->expire_ms != 0)) {  // the root page stays clean otherwise
        root_->volatile_keys += expire_ms != 0 ? 1 : -1;
        spare::DeclareWrite(root_->volatile_keys);
      }
      e->expire_ms = expire_ms;
      spare::DeclareWrite(e, sizeof(Entry));  // expiry and length
      spare::DeclareWrite(e->bytes() + e->klen, value.size());
      ++mutations_;
      return spare::Status::Ok();
    }
  }
  Entry* e = NewEntry(key, hash, value, expire_ms);
  if (e == nullptr) {
    return spare::Status(spare::Code::kResourceExhausted, "arena full");
  }
  Install(s, e);
  if (found) FreeEntry(s.entry);
  ++mutations_;
  return spare::Status::Ok();
}

spare::Status Store::SetMany(std::span<const std::pair<std::string_view, std::string_view>> pairs) {
  ResizeStep(kStepSlots);
  SPARE_RETURN_IF_ERROR(Reserve(pairs.size()));
  // Allocate every entry first, so running out of memory changes nothing.
  std::vector<Entry*> fresh;
  fresh.reserve(pairs.size());
  for (const auto& [key, value] : pairs) {
    Entry* e = NewEntry(key, Hash(key), value, 0);
    if (e == nullptr) {
      for (Entry* f : fresh) FreeEntry(f);
      return spare::Status(spare::Code::kResourceExhausted, "arena full");
    }
    fresh.push_back(e);
  }
  for (Entry* e : fresh) {
    Slot s;
    bool found = Find(e->key(), e->hash, &s);
    Install(s, e);
    if (found) FreeEntry(s.entry);
  }
  ++mutations_;
  return spare::Status::Ok();
}

bool Store::SetExpire(std::string_view key, int64_t expire_ms, int64_t now_ms) {
  Slot s;
  if (!Find(key, Hash(key), &s)) return false;
  Entry* e = s.entry;
  if (Expired(e, now_ms)) {
    Get(key, now_ms, nullptr);  // reclaims it
    return false;
  }
  if ((expire_ms != 0) != (e->expire_ms != 0)) {
    root_->volatile_keys += expire_ms != 0 ? 1 : -1;
    spare::DeclareWrite(root_->volatile_keys);
  }
  e->expire_ms = expire_ms;
  spare::DeclareWrite(e->expire_ms);
  ++mutations_;
  return true;
}

bool Store::Delete(std::string_view key, int64_t now_ms) {
  ResizeStep(kStepSlots);
  Slot s;
  if (!Find(key, Hash(key), &s)) return false;
  bool live = !Expired(s.entry, now_ms);
  if (!live) ++root_->expired_keys;
  Remove(s);
  FreeEntry(s.entry);
  ++mutations_;
  return live;
}

void Store::Clear() {
  arena_->Reset();
  auto root = Create(arena_);
  if (!root.ok()) Die("cannot recreate the store in an empty arena");
  root_ = *root;
  ++mutations_;
}

size_t Store::SweepExpired(int64_t now_ms, size_t max_slots) {
  if (root_->volatile_keys == 0) return 0;
  Table& m = root_->main;
  uint64_t i = root_->sweep_pos & m.mask;
  size_t deleted = 0;
  for (size_t k = 0; k < max_slots && k <= m.mask; ++k) {
    uint64_t s = m.slots[i];
    if (s != kEmpty && Expired(EntryOf(s), now_ms)) {
      Entry* e = EntryOf(s);
      Remove({&m, i, e, 0});  // shifts a later entry into i: look at i again
      FreeEntry(e);
      ++deleted;
      continue;
    }
    i = (i + 1) & m.mask;
  }
  root_->sweep_pos = i;
  spare::DeclareWrite(root_->sweep_pos);
  if (deleted != 0) {
    root_->expired_keys += deleted;
    ++mutations_;
  }
  return deleted;
}

StoreStats Store::stats() const {
  StoreStats st;
  st.keys = size();
  st.volatile_keys = root_->volatile_keys;
  st.table_slots = root_->main.mask + 1;
  st.resizing = root_->old.slots != nullptr;
  st.expired_keys = root_->expired_keys;
  st.used_bytes = arena_->used_bytes();
  st.capacity_bytes = arena_->capacity();
  return st;
}

}  // namespace kv
