#include "epoch/copy.h"

#include <atomic>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define SPARE_STREAM_STORES 1
#endif

namespace spare::epoch {

#ifdef SPARE_STREAM_STORES

namespace {
// Below this, setting up the streaming loop is not worth it.
constexpr size_t kStreamMin = 256;
}  // namespace

void StreamCopy(std::byte* dst, const std::byte* src, size_t n) {
  if (n < kStreamMin) {
    std::memcpy(dst, src, n);
    return;
  }
  // _mm_stream_si128 needs a 16-byte aligned destination. Staging page data
  // is already 64-byte aligned (DataOffset in staging.cc, in a page-aligned
  // mapping), so this head is empty there; other callers may pass anything.
  const size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {  // one cache line per iteration
    const auto* s = reinterpret_cast<const __m128i*>(src + i);
    auto* d = reinterpret_cast<__m128i*>(dst + i);
    __m128i a = _mm_loadu_si128(s);
    __m128i b = _mm_loadu_si128(s + 1);
    __m128i c = _mm_loadu_si128(s + 2);
    __m128i e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  }
  for (; i + 16 <= n; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
  std::memcpy(dst + i, src + i, n - i);
}

void StreamFence() { _mm_sfence(); }

#else  // no streaming stores: memcpy, and the fence only orders them

void StreamCopy(std::byte* dst, const std::byte* src, size_t n) { std::memcpy(dst, src, n); }

void StreamFence() { std::atomic_thread_fence(std::memory_order_release); }

#endif

}  // namespace spare::epoch
