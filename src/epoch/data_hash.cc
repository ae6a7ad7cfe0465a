#include "epoch/data_hash.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>

#include "epoch/copy.h"

namespace spare::epoch {

namespace {
constexpr size_t kHashStep = 16 * 1024;
}  // namespace

#if defined(__x86_64__)
uint64_t Hash64Avx2(const void* data, size_t n);  // data_hash_avx2.cc
uint64_t StreamCopyAndHashAvx2(std::byte* dst, const std::byte* src, size_t n, size_t step);
#endif

uint64_t StreamCopyAndHash(std::byte* dst, const std::byte* src, size_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return StreamCopyAndHashAvx2(dst, src, n, kHashStep);
#endif
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  for (size_t off = 0; off < n; off += kHashStep) {
    const size_t k = std::min(kHashStep, n - off);
    StreamCopy(dst + off, src + off, k);
    XXH3_64bits_update(&st, src + off, k);
  }
  return XXH3_64bits_digest(&st);
}

uint64_t Hash64(const void* data, size_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return Hash64Avx2(data, n);
#endif
  return XXH3_64bits(data, n);
}

uint64_t CombineLeafHashes(std::span<const uint64_t> leaves) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "leaf hashes are little endian");
  return Hash64(leaves.data(), leaves.size_bytes());
}

}  // namespace spare::epoch
