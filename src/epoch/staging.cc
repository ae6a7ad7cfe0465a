#include "epoch/staging.h"

#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/check.h"
#include "common/hex.h"
#include "epoch/copy_pool.h"
#include "epoch/data_hash.h"

namespace spare::epoch {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t Align(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

// Where the entry table of a part starts, given its record length.
uint64_t TableOffset(uint32_t record_len) { return Align(sizeof(SlotHeader) + record_len, 8); }
// Where page data starts, given the record length and entry count.
uint64_t DataOffset(uint32_t record_len, uint64_t n_entries) {
  return Align(TableOffset(record_len) + n_entries * sizeof(SlotEntry), 64);
}

uint64_t TableHash(const std::byte* slot, const SlotHeader& h) {
  SlotHeader copy = h;
  copy.table_hash = 0;
  XXH64_state_t st;
  XXH64_reset(&st, 0);
  XXH64_update(&st, &copy, sizeof(copy));
  XXH64_update(&st, slot + sizeof(SlotHeader), h.record_len);
  XXH64_update(&st, slot + TableOffset(h.record_len), uint64_t{h.n_entries} * sizeof(SlotEntry));
  return XXH64_digest(&st);
}

Status Torn(uint64_t epoch, uint32_t part, const std::string& what) {
  return Status(Code::kTornEpoch,
                "epoch " + std::to_string(epoch) + " part " + std::to_string(part) + ": " + what);
}

}  // namespace

size_t StagingBytes(uint32_t slot_count, uint64_t slot_size) {
  return kSlotBase + uint64_t{slot_count} * slot_size;
}

void InitStaging(StagingView& view) {
  StagingHeader h{kStagingMagic, kStagingVersion, view.slot_count, 0, view.slot_size};
  std::memcpy(view.base, &h, sizeof(h));
}

Result<StagingView> OpenStaging(std::byte* base, size_t size) {
  if (size < kSlotBase) return Status(Code::kBadMessage, "staging area smaller than its header");
  StagingHeader h;
  std::memcpy(&h, base, sizeof(h));
  if (h.magic != kStagingMagic) return Status(Code::kBadMessage, "staging area has bad magic");
  if (h.version != kStagingVersion)
    return Status(Code::kBadMessage, "staging version " + std::to_string(h.version) +
                                         " is not the supported " +
                                         std::to_string(kStagingVersion));
  if (h.slot_count == 0 || h.slot_size < kMinSlotSize || h.slot_size % kPage != 0 ||
      StagingBytes(h.slot_count, h.slot_size) > size)
    return Status(Code::kBadMessage, "staging geometry " + std::to_string(h.slot_count) + " x " +
                                         std::to_string(h.slot_size) +
                                         " does not fit the area of " + std::to_string(size));
  return StagingView{base, size, h.slot_count, h.slot_size};
}

EpochPlan PlanEpoch(const StagingView& view, std::span<const DirtyRun> runs, size_t record_len) {
  EpochPlan plan;
  uint32_t part = 0;
  uint32_t rec = static_cast<uint32_t>(record_len);
  uint64_t n = 0, data = 0;  // entries and data bytes in the current part
  for (uint32_t r = 0; r < runs.size(); ++r) {
    uint64_t skip = 0;
    while (skip < runs[r].length) {
      uint64_t fixed = DataOffset(part == 0 ? rec : 0, n + 1) + data;
      // Entries are byte ranges (declared writes), so the data of one part
      // packs them back to back; page runs keep page-sized pieces as long
      // as whole pages fit.
      uint64_t room = fixed < view.slot_size ? view.slot_size - fixed : 0;
      if (room >= kPage && runs[r].length - skip > room) room = room / kPage * kPage;
      if (room == 0) {  // this part is full: start the next one
        ++part;
        n = data = 0;
        continue;
      }
      uint64_t len = std::min(room, runs[r].length - skip);
      plan.pieces.push_back({part, r, skip, len});
      ++n;
      data += len;
      skip += len;
    }
  }
  plan.parts = part + 1;
  return plan;
}

void FillEpoch(const StagingView& view, uint64_t generation, uint64_t epoch, uint32_t first_slot,
               const EpochPlan& plan, std::span<const DirtyRun> runs,
               std::span<const std::byte> record, CopyPool* pool) {
  // Three passes, so that the page data of all parts can be copied as one
  // job list (shared with the pool's helpers) while every slot's header is
  // still written last: (1) record and entry table of each part, and one
  // copy job per hash leaf, (2) all page data, copied and hashed, fenced,
  // (3) each part's header with its data hash and table hash.
  std::vector<SlotHeader> headers(plan.parts);
  std::vector<CopyPool::Job> jobs;
  std::vector<uint64_t> leaves;              // one hash per leaf, all parts
  std::vector<size_t> leaf_end(plan.parts);  // part p's leaves end here
  uint64_t n_leaves = 0;
  for (const EpochPlan::Piece& p : plan.pieces) n_leaves += LeafCount(p.length);
  leaves.resize(n_leaves);
  jobs.reserve(n_leaves);
  size_t i = 0;
  for (uint32_t part = 0; part < plan.parts; ++part) {
    std::byte* slot = view.slot((first_slot + part) % view.slot_count);
    size_t end = i;
    while (end < plan.pieces.size() && plan.pieces[end].part == part) ++end;
    SlotHeader& h = headers[part];
    h.magic = kSlotMagic;
    h.version = kStagingVersion;
    h.generation = generation;
    h.epoch = epoch;
    h.part = part;
    h.parts = plan.parts;
    h.record_len = part == 0 ? static_cast<uint32_t>(record.size()) : 0;
    h.n_entries = static_cast<uint32_t>(end - i);
    if (h.record_len) std::memcpy(slot + sizeof(SlotHeader), record.data(), record.size());
    auto* table = reinterpret_cast<SlotEntry*>(slot + TableOffset(h.record_len));
    uint64_t at = DataOffset(h.record_len, h.n_entries);
    for (size_t k = i; k < end; ++k) {
      const EpochPlan::Piece& p = plan.pieces[k];
      const DirtyRun& run = runs[p.run];
      table[k - i] = SlotEntry{run.region, 0, run.offset + p.skip, p.length};
      for (uint64_t off = 0; off < p.length; off += kHashLeaf) {
        const uint64_t n = std::min<uint64_t>(kHashLeaf, p.length - off);
        jobs.push_back({slot + at + off, run.src + p.skip + off, n, &leaves[jobs.size()]});
      }
      at += p.length;
    }
    leaf_end[part] = jobs.size();
    h.used = at;
    SPARE_CHECK(h.used <= view.slot_size);
    i = end;
  }
  if (pool) {
    pool->Copy(jobs);
  } else {
    CopyPool alone(0);
    alone.Copy(jobs);
  }
  for (uint32_t part = 0; part < plan.parts; ++part) {
    std::byte* slot = view.slot((first_slot + part) % view.slot_count);
    SlotHeader& h = headers[part];
    const size_t begin = part ? leaf_end[part - 1] : 0;
    h.data_hash = CombineLeafHashes(std::span(leaves).subspan(begin, leaf_end[part] - begin));
    h.table_hash = TableHash(slot, h);
    std::memcpy(slot, &h, sizeof(h));
  }
}

Result<ValidatedEpoch> ValidateEpoch(const StagingView& view, uint64_t generation, uint64_t epoch,
                                     uint32_t first_slot, uint32_t parts,
                                     std::span<const RegionTarget> regions) {
  if (parts == 0 || parts > view.slot_count || first_slot >= view.slot_count)
    return Status(Code::kTornEpoch, "epoch " + std::to_string(epoch) + " names slots " +
                                        std::to_string(first_slot) + "+" + std::to_string(parts) +
                                        " outside the ring of " + std::to_string(view.slot_count));
  ValidatedEpoch v;
  std::vector<uint64_t> leaves;
  for (uint32_t part = 0; part < parts; ++part) {
    const std::byte* slot = view.slot((first_slot + part) % view.slot_count);
    SlotHeader h;  // a private copy: the instance could change the slot under us
    std::memcpy(&h, slot, sizeof(h));
    if (h.magic != kSlotMagic || h.version != kStagingVersion)
      return Torn(epoch, part, "slot has bad magic or version");
    if (h.generation != generation)
      return Status(Code::kStaleGeneration,
                    "epoch " + std::to_string(epoch) + " part " + std::to_string(part) +
                        ": slot was filled by generation " + std::to_string(h.generation) +
                        ", the instance is at generation " + std::to_string(generation) +
                        "; nothing applied");
    if (h.epoch != epoch) return Torn(epoch, part, "slot holds epoch " + std::to_string(h.epoch));
    if (h.part != part || h.parts != parts)
      return Torn(epoch, part,
                  "slot says part " + std::to_string(h.part) + " of " + std::to_string(h.parts) +
                      ", expected " + std::to_string(parts) + " parts");
    if (h.record_len > kMaxRecord || (part != 0 && h.record_len != 0))
      return Torn(epoch, part, "bad record length " + std::to_string(h.record_len));
    uint64_t data = DataOffset(h.record_len, h.n_entries);
    if (h.used > view.slot_size || data > h.used)
      return Status(Code::kOutOfBounds, "epoch " + std::to_string(epoch) + " part " +
                                            std::to_string(part) + ": slot use " +
                                            std::to_string(h.used) + " exceeds the slot");
    // Copy the record and table before hashing them, so what we check is
    // exactly what we use.
    std::string local(reinterpret_cast<const char*>(slot), data);
    const auto* lbase = reinterpret_cast<const std::byte*>(local.data());
    if (TableHash(lbase, h) != h.table_hash) return Torn(epoch, part, "table checksum mismatch");
    if (part == 0) v.record.assign(local.data() + sizeof(SlotHeader), h.record_len);
    const auto* table = reinterpret_cast<const SlotEntry*>(lbase + TableOffset(h.record_len));
    uint64_t at = data;
    leaves.clear();
    for (uint32_t k = 0; k < h.n_entries; ++k) {
      SlotEntry e;
      std::memcpy(&e, &table[k], sizeof(e));
      if (e.region >= regions.size())
        return Status(Code::kOutOfBounds, "epoch " + std::to_string(epoch) + " writes region " +
                                              std::to_string(e.region) + " but only " +
                                              std::to_string(regions.size()) + " exist");
      const uint64_t size = regions[e.region].size;
      if (e.length == 0 || e.offset > size || e.length > size - e.offset)
        return Status(Code::kOutOfBounds,
                      "epoch " + std::to_string(epoch) + " writes " + std::to_string(e.length) +
                          " bytes at offset " + std::to_string(e.offset) + " of region " +
                          std::to_string(e.region) + " (size " + std::to_string(size) + ")");
      if (e.length > h.used - at)
        return Status(Code::kOutOfBounds, "epoch " + std::to_string(epoch) + " part " +
                                              std::to_string(part) +
                                              ": entry data runs past the slot's used bytes");
      v.writes.push_back({e.region, e.offset, e.length, slot + at});
      for (uint64_t off = 0; off < e.length; off += kHashLeaf)
        leaves.push_back(Hash64(slot + at + off, std::min<uint64_t>(kHashLeaf, e.length - off)));
      at += e.length;
      v.bytes += e.length;
    }
    if (at != h.used) return Torn(epoch, part, "used bytes do not match the entries");
    const uint64_t got = CombineLeafHashes(leaves);
    if (got != h.data_hash)
      return Status(Code::kChecksumMismatch,
                    "epoch " + std::to_string(epoch) + " part " + std::to_string(part) +
                        ": page data hash " + Hex(got) + " does not match the slot's " +
                        Hex(h.data_hash) + " (corrupted after it was copied); nothing applied");
  }
  return v;
}

Status WriteEpoch(const ValidatedEpoch& v, std::span<const RegionTarget> regions,
                  const WriteFn* write) {
  // Writes of many small ranges spread over a large image miss the TLB and
  // the cache on each destination; touching the one two writes ahead starts
  // its page walk and first line early (794 random 520-byte writes into a
  // 1 GiB mapping here: 226 -> 182 us).
  constexpr size_t kAhead = 2;
  for (size_t i = 0; i < v.writes.size(); ++i) {
    const auto& w = v.writes[i];
    if (write == nullptr && regions[w.region].map != nullptr) {
      if (i + kAhead < v.writes.size()) {
        const auto& next = v.writes[i + kAhead];
        if (std::byte* m = regions[next.region].map) {
          __builtin_prefetch(m + next.offset, 1);
          if (next.length > 512) __builtin_prefetch(m + next.offset + 512, 1);
        }
      }
      std::memcpy(regions[w.region].map + w.offset, w.src, w.length);  // bounds validated
      continue;
    }
    uint64_t done = 0;
    while (done < w.length) {
      const auto off = static_cast<off_t>(w.offset + done);
      ssize_t n = write ? (*write)(regions[w.region].fd, w.src + done, w.length - done, off)
                        : ::pwrite(regions[w.region].fd, w.src + done, w.length - done, off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        return Status::FromErrno("writing " + std::to_string(w.length - done) +
                                     " bytes at offset " + std::to_string(w.offset + done) +
                                     " of region " + std::to_string(w.region),
                                 n < 0 ? errno : EIO);
      done += static_cast<uint64_t>(n);
    }
  }
  return Status::Ok();
}

Status ApplyEpoch(const StagingView& view, uint64_t generation, uint64_t epoch, uint32_t first_slot,
                  uint32_t parts, std::span<const RegionTarget> regions, std::string* record,
                  uint64_t* bytes) {
  SPARE_ASSIGN_OR_RETURN(ValidatedEpoch v,
                         ValidateEpoch(view, generation, epoch, first_slot, parts, regions));
  SPARE_RETURN_IF_ERROR(WriteEpoch(v, regions).With("applying epoch " + std::to_string(epoch)));
  if (record) *record = std::move(v.record);
  if (bytes) *bytes = v.bytes;
  return Status::Ok();
}

// Walks the slot as ValidateEpoch would, bounded by the slot, and writes
// both checksums for what it holds; a layout that leaves the slot is left
// alone (ValidateEpoch refuses it before any checksum).
void SealSlot(const StagingView& view, uint32_t index) {
  std::byte* slot = view.slot(index);
  SlotHeader h;
  std::memcpy(&h, slot, sizeof(h));
  if (h.record_len > kMaxRecord || h.n_entries > view.slot_size / sizeof(SlotEntry)) return;
  const uint64_t data = DataOffset(h.record_len, h.n_entries);
  if (data > view.slot_size || h.used > view.slot_size || data > h.used) return;
  std::vector<uint64_t> leaves;
  uint64_t at = data;
  for (uint32_t k = 0; k < h.n_entries; ++k) {
    SlotEntry e;
    std::memcpy(&e, slot + TableOffset(h.record_len) + k * sizeof(SlotEntry), sizeof(e));
    if (e.length > h.used - at) return;
    for (uint64_t off = 0; off < e.length; off += kHashLeaf)
      leaves.push_back(Hash64(slot + at + off, std::min<uint64_t>(kHashLeaf, e.length - off)));
    at += e.length;
  }
  h.data_hash = CombineLeafHashes(leaves);
  h.table_hash = TableHash(slot, h);
  std::memcpy(slot, &h, sizeof(h));
}

}  // namespace spare::epoch
