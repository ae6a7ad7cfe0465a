// spare/declare.h — declaring the bytes a program writes.
//
// A region mapped with WriteTracking::kDeclared (spare/runtime.h) ships, at
// each commit(), exactly the byte ranges declared since the previous one,
// instead of every page the dirty tracker saw written: an 8-byte update of
// a hash-table slot ships 8 bytes, not a 4 KiB page, and commit() does not
// walk page tables at all. The price is the contract: every byte written
// must be declared before the next commit(), or the write is missing from
// the image a restart resumes from. Run tests with $SPARE_VERIFY_WRITES=1,
// which makes commit() check it byte for byte (spare/runtime.h).
//
//   entry->hits += 1;
//   spare::DeclareWrite(entry->hits);          // one object
//   std::memcpy(slot, value, n);
//   spare::DeclareWrite(slot, n);              // any byte range
//
// spare::Arena declares its own metadata and every new block (the block
// counts as written by allocate(); see spare/alloc.h), so a program whose
// data lives in an arena declares only what it changes in place.
//
// Cost: a compare against each declared region (few) and an append; a
// range that extends or repeats the previous one is merged on the spot.
// Declaring a range outside every declared region does nothing (the same
// code can run unprotected, or over page-tracked regions).
// Threading: the thread that calls commit() (as for everything a Runtime
// hands out).
#pragma once

#include <cstddef>
#include <type_traits>

namespace spare {

void DeclareWrite(const void* p, size_t n) noexcept;

template <typename T>
inline void DeclareWrite(const T& object) noexcept {
  static_assert(!std::is_pointer_v<T>, "declare the object pointed to: DeclareWrite(*p)");
  DeclareWrite(&object, sizeof object);
}

}  // namespace spare
