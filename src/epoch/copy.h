// epoch/copy.h — copying page data into staging without filling the cache.
//
// StreamCopy writes with non-temporal stores on x86-64 (SSE2
// _mm_stream_si128, part of the x86-64 baseline): the bytes go to memory
// through write-combining buffers instead of being read into the cache
// first and evicting the app's working set. On this project's 2-core VM it
// copies 10 MiB page by page in ~1.05 ms against ~1.6 ms for memcpy. Other
// architectures use memcpy.
//
// Non-temporal stores are weakly ordered: another core — the agent process
// reading the slot — may see them after later ordinary stores of the same
// thread. REQUIRES: every thread that called StreamCopy calls StreamFence()
// after its last copy and before any store that publishes the data (a slot
// header, an atomic flag another thread acquires, the Commit message).
#pragma once

#include <cstddef>

namespace spare::epoch {

// Copies n bytes from src to dst, any alignment, any size (short copies
// and the unaligned head and tail use memcpy). REQUIRES: the ranges do not
// overlap.
void StreamCopy(std::byte* dst, const std::byte* src, size_t n);

// Orders every StreamCopy of the calling thread before its later stores
// (sfence on x86-64; a release fence elsewhere).
void StreamFence();

}  // namespace spare::epoch
