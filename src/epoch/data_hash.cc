#include "epoch/data_hash.h"

#include <xxhash.h>

namespace spare::epoch {

#if defined(__x86_64__)
uint64_t Hash64Avx2(const void* data, size_t n);  // data_hash_avx2.cc
#endif

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
