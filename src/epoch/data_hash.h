// epoch/data_hash.h — the checksum of a staging slot's page data.
//
// A slot's data travels: from the instance's pages into staging, and next
// over the network into a standby's staging area. Its header carries a
// checksum of that data so every receiver can refuse a slot whose bytes are
// not the ones the instance copied (docs/WIRE.md §2):
//
//   each entry's data is cut into leaves of kHashLeaf bytes from the
//   entry's start (the last leaf of an entry may be shorter);
//   leaf hash = XXH3-64 (seed 0) of the leaf's bytes;
//   data_hash = XXH3-64 (seed 0) of the leaf hashes, in entry order, as
//   little-endian u64s (no entries: XXH3-64 of zero bytes).
//
// Leaves keep the hash parallel and cache-hot: the copy into staging hashes
// each leaf right after copying it, on whichever thread copied it
// (copy_pool.h), while its bytes are still in L1/L2.
//
// Threading: free functions, no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace spare::epoch {

inline constexpr size_t kHashLeaf = 64 * 1024;

// XXH3-64 (seed 0) of n bytes. Uses AVX2 when the CPU has it (about 4x
// faster here); the value is the same either way.
uint64_t Hash64(const void* data, size_t n);

// Copies n bytes with StreamCopy (copy.h) and returns Hash64(src, n),
// hashing each 16 KiB right after copying it, while it is still in L1:
// about half the cost of copying first and hashing the 64 KiB leaf after.
// Same value as Hash64(src, n).
uint64_t StreamCopyAndHash(std::byte* dst, const std::byte* src, size_t n);

// data_hash from the leaf hashes (see above).
uint64_t CombineLeafHashes(std::span<const uint64_t> leaves);

// Leaves of an entry of n bytes.
inline uint64_t LeafCount(uint64_t n) { return (n + kHashLeaf - 1) / kHashLeaf; }

}  // namespace spare::epoch
