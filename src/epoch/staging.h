// epoch/staging.h — the staging area an instance fills and its agent applies.
//
// One memfd per instance, created by the agent, mapped MAP_SHARED by both.
// Layout (docs/WIRE.md has the byte table):
//   StagingHeader at offset 0 (one page)
//   slot i at kSlotBase + i * slot_size, i < slot_count
// A slot holds one part of an epoch:
//   SlotHeader | record bytes (part 0 only) | entries[] | page data
// An entry {region, offset, length} names `length` bytes of region `region`
// at byte `offset` (any bytes: whole pages from the page tracker, or the
// ranges a program declared), whose data follows the entry table in entry
// order, packed. The header names the instance generation that filled it
// and carries two checksums: of the header, record and table, and of the
// page data (epoch/data_hash.h), so a slot can cross hosts and still be
// checked by whoever applies it.
//
// Ownership: a slot is FREE, then the instance owns it while filling, then
// hands it over with a Commit message (first_slot, parts); from then the
// agent owns it until it answers Released(epoch), which frees the epoch's
// slots (docs/ARCHITECTURE.md: Released frees slots, Durable releases
// outputs). Neither side writes a slot it does not own. The agent never trusts
// what it reads: ValidateEpoch() checks magic, epoch, part numbering,
// lengths and every entry's bounds before ApplyEpoch() writes anything.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "spare/status.h"

namespace spare::epoch {

class CopyPool;

inline constexpr uint32_t kStagingMagic = 0x47545353;  // "SSTG"
inline constexpr uint32_t kSlotMagic = 0x544f4c53;     // "SLOT"
inline constexpr uint32_t kStagingVersion = 3;  // 3: entries are byte ranges
inline constexpr size_t kSlotBase = 4096;
inline constexpr size_t kMaxRecord = 64 * 1024;

struct StagingHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t slot_count;
  uint32_t reserved;
  uint64_t slot_size;
};

struct SlotHeader {
  uint32_t magic;
  uint32_t version;
  uint64_t generation;  // of the instance that filled the slot
  uint64_t epoch;
  uint32_t part;        // 0-based
  uint32_t parts;       // parts of this epoch
  uint32_t record_len;  // non-zero only in part 0
  uint32_t n_entries;
  uint64_t used;        // bytes of the slot in use, header included
  uint64_t data_hash;   // of the page data (epoch/data_hash.h)
  uint64_t table_hash;  // XXH64 of the header (with this field 0), record, entries
};
static_assert(sizeof(SlotHeader) == 64);

struct SlotEntry {
  uint32_t region;
  uint32_t reserved;
  uint64_t offset;
  uint64_t length;
};

// A mapped staging area (either side). Not owning.
struct StagingView {
  std::byte* base = nullptr;
  size_t size = 0;
  uint32_t slot_count = 0;
  uint64_t slot_size = 0;
  std::byte* slot(uint32_t i) const { return base + kSlotBase + uint64_t{i} * slot_size; }
};

// Bytes a staging memfd needs for slot_count slots of slot_size.
size_t StagingBytes(uint32_t slot_count, uint64_t slot_size);
// Writes the header into a fresh area (agent side).
void InitStaging(StagingView& view);
// Checks the header of an area received from the agent (instance side).
Result<StagingView> OpenStaging(std::byte* base, size_t size);

// The regions an epoch may write, in region-index order.
struct RegionTarget {
  int fd;         // committed image (memfd)
  uint64_t size;  // its size in bytes
  // The image mapped MAP_SHARED (null: write with pwrite(2)). Writes
  // through it are plain copies; out of memory then stalls the writer in
  // the page-fault path (the kernel's OOM handling) instead of failing
  // the write with ENOMEM.
  std::byte* map = nullptr;
};

// Instance side: a run of dirty bytes of one region to put in an epoch.
struct DirtyRun {
  uint32_t region;
  const std::byte* src;  // where the bytes are now (the instance's mapping)
  uint64_t offset;       // byte offset in the region
  uint64_t length;       // bytes, > 0
};

// How an epoch's runs are cut into slot parts (instance side).
struct EpochPlan {
  struct Piece {
    uint32_t part;
    uint32_t run;     // index into the runs
    uint64_t skip;    // bytes of the run before this piece
    uint64_t length;  // bytes
  };
  uint32_t parts = 1;
  std::vector<Piece> pieces;  // in part order
};
// Cuts `runs` (and a record of record_len bytes, which goes to part 0) into
// slot-sized parts. parts may exceed view.slot_count: the caller checks.
EpochPlan PlanEpoch(const StagingView& view, std::span<const DirtyRun> runs, size_t record_len);
// Copies the planned pieces and the record into plan.parts slots starting
// at first_slot (wrapping); each slot's header is written after its record,
// table and data. The page data goes through `pool` (streaming stores, and
// its helper threads for large epochs; copy_pool.h), or is copied by the
// calling thread alone when pool is null; it is hashed as it is copied.
// On return everything is in memory and ordered before the caller's next
// store: send Commit then.
// REQUIRES: the caller owns those slots; nothing writes the runs' source
// bytes meanwhile (commit() is called at a quiescent point), or the data
// hash would not match the copy and the epoch would be refused.
void FillEpoch(const StagingView& view, uint64_t generation, uint64_t epoch, uint32_t first_slot,
               const EpochPlan& plan, std::span<const DirtyRun> runs,
               std::span<const std::byte> record, CopyPool* pool = nullptr);

// Smallest slot_size accepted (a full record plus one page and headers).
inline constexpr uint64_t kMinSlotSize = 128 * 1024;

// Agent side: an epoch checked against the regions. Bounds and entry
// tables are copied out of shared memory, so an instance that scribbles on
// its slots after handing them over cannot make the agent write out of
// bounds.
struct ValidatedEpoch {
  struct Write {
    uint32_t region;
    uint64_t offset;
    uint64_t length;
    const std::byte* src;
  };
  std::vector<Write> writes;
  std::string record;
  uint64_t bytes = 0;
};
// Checks every part of `epoch` in slots [first_slot, first_slot+parts)
// (wrapping) without writing anything: layout and bounds, then that every
// slot was filled by `generation` (else kStaleGeneration) and that its data
// matches its data hash (else kChecksumMismatch).
Result<ValidatedEpoch> ValidateEpoch(const StagingView& view, uint64_t generation, uint64_t epoch,
                                     uint32_t first_slot, uint32_t parts,
                                     std::span<const RegionTarget> regions);

// Rewrites slot `index`'s data and table checksums to match what it holds
// (for tests and the fuzzer: a hand-edited slot then reaches the layout and
// bounds checks instead of failing its checksum). REQUIRES: the caller
// owns the slot.
void SealSlot(const StagingView& view, uint32_t index);

// How bytes reach a region's memfd: pwrite(2), or a test's fault injector.
using WriteFn = std::function<ssize_t(int fd, const void* buf, size_t n, off_t offset)>;

// Writes every write of a validated epoch into its region's memfd, in
// order: copied into the target's mapping when it has one and `write` is
// null, else written with `write` or pwrite(2). kIoError names the region, offset and errno when a write fails;
// the image is then partly at this epoch: writing the same epoch again
// from the start (idempotent) repairs it. `write` null: pwrite(2).
// REQUIRES: the slots stay owned by the caller until it returns.
Status WriteEpoch(const ValidatedEpoch& v, std::span<const RegionTarget> regions,
                  const WriteFn* write = nullptr);

// ValidateEpoch, then WriteEpoch, then the record to *record. Idempotent:
// applying the same epoch again gives the same image. On a validation
// error nothing has been written. *bytes (optional): page bytes written.
Status ApplyEpoch(const StagingView& view, uint64_t generation, uint64_t epoch, uint32_t first_slot,
                  uint32_t parts, std::span<const RegionTarget> regions, std::string* record,
                  uint64_t* bytes = nullptr);

}  // namespace spare::epoch
