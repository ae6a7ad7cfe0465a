// region/mapping.h — memfds and fixed-address mappings for regions.
//
// The committed image of a region is a memfd owned by the agent. The
// instance maps it MAP_PRIVATE at the region's common virtual address, so
// its writes go to private copy-on-write pages and the image changes only
// when the agent applies an epoch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/fd.h"
#include "spare/status.h"

namespace spare::region {

inline constexpr size_t kPageSize = 4096;
size_t RoundUpToPage(size_t n);

// Where derived region addresses live: [kVaBase, kVaBase + kVaSpan), 16 to
// 64 TiB, each region aligned to 1 GiB. With address-space randomization off
// (as `spare run` launches instances) the kernel puts PIE text near 85 TiB
// and mmap/stack near 128 TiB, so this span stays free.
inline constexpr uint64_t kVaBase = 0x1000'0000'0000ULL;  // 16 TiB
inline constexpr uint64_t kVaSpan = 0x3000'0000'0000ULL;  // 48 TiB

// Deterministic address for (instance, region): same inputs, same address,
// on every run and every host (XXH64 of instance_id + '\0' + region, seed 0,
// picks one of the 1 GiB slots from which `size` still fits in the span).
// Two regions of one instance can overlap (about 1 in 49152 per pair of
// 1 GiB regions); mapping the second then fails with kResourceExhausted
// naming the address, and one of them must be renamed.
// REQUIRES: size <= kVaSpan (aborts otherwise; callers validate sizes).
uint64_t DeriveAddress(std::string_view instance_id, std::string_view region, size_t size);

// memfd_create(name, MFD_CLOEXEC) sized to `size` (page rounded).
Result<UniqueFd> CreateMemfd(std::string_view name, size_t size);
// Refuses (kFailedPrecondition, naming what is missing) an fd that is not a
// memfd sealed by CreateMemfd: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL.
Status CheckSealed(int fd);

// Maps fd MAP_PRIVATE read/write at exactly `address` (MAP_FIXED_NOREPLACE).
// kResourceExhausted names the address when something else is there.
Result<void*> MapPrivateFixed(int fd, uint64_t address, size_t size);
// Anonymous private mapping at exactly `address` (unprotected mode).
Result<void*> MapAnonymousFixed(uint64_t address, size_t size);
// MAP_SHARED mapping of fd anywhere (staging, meta).
Result<void*> MapShared(int fd, size_t size, bool writable);

}  // namespace spare::region
