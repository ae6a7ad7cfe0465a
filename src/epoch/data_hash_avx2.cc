// XXH3-64 compiled for AVX2 (this file alone is built with -mavx2; the
// caller checks the CPU first). XXH_INLINE_ALL makes every xxhash function
// static to this file, so no AVX2 code leaks into other translation units.
#include <cstddef>
#include <cstdint>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace spare::epoch {

uint64_t Hash64Avx2(const void* data, size_t n) { return XXH3_64bits(data, n); }

void StreamCopy(std::byte* dst, const std::byte* src, size_t n);  // copy.h

uint64_t StreamCopyAndHashAvx2(std::byte* dst, const std::byte* src, size_t n, size_t step) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  for (size_t off = 0; off < n; off += step) {
    const size_t k = n - off < step ? n - off : step;
    StreamCopy(dst + off, src + off, k);
    XXH3_64bits_update(&st, src + off, k);
  }
  return XXH3_64bits_digest(&st);
}

}  // namespace spare::epoch
