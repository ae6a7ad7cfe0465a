// XXH3-64 compiled for AVX2 (this file alone is built with -mavx2; the
// caller checks the CPU first). XXH_INLINE_ALL makes every xxhash function
// static to this file, so no AVX2 code leaks into other translation units.
#include <cstddef>
#include <cstdint>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace spare::epoch {

uint64_t Hash64Avx2(const void* data, size_t n) { return XXH3_64bits(data, n); }

}  // namespace spare::epoch
