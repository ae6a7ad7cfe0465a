// region/test_util.h — test helpers: regions mapped the way spare maps them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "common/fd.h"
#include "region/mapping.h"
#include "region/tracker.h"
#include "spare/status.h"

namespace spare::region {
// Lets GoogleTest print PageRange values in failure messages.
void PrintTo(const PageRange& r, std::ostream* os);
}  // namespace spare::region

namespace spare::region::testing {

// A mapping at a derived address, unmapped on destruction. A memfd-backed
// one is MAP_PRIVATE, exactly like an instance's region.
class TestRegion {
 public:
  static Result<TestRegion> MemfdPrivate(size_t pages);
  static Result<TestRegion> Anonymous(size_t pages);

  TestRegion(TestRegion&& o) noexcept;
  TestRegion& operator=(TestRegion&&) = delete;
  ~TestRegion();

  void* base() const { return base_; }
  size_t len() const { return len_; }
  int memfd() const { return fd_.get(); }
  char* page(size_t i) const { return static_cast<char*>(base_) + i * kPageSize; }
  uintptr_t addr(size_t i) const { return reinterpret_cast<uintptr_t>(page(i)); }
  // [page first, page last) as an absolute PageRange.
  PageRange pages(size_t first, size_t last) const { return {addr(first), addr(last)}; }

 private:
  TestRegion(UniqueFd fd, void* base, size_t len) : fd_(std::move(fd)), base_(base), len_(len) {}

  UniqueFd fd_;
  void* base_ = nullptr;
  size_t len_ = 0;
};

// A name no other test in this process (or a concurrent run) uses.
std::string UniqueName(const char* what);

// Collect() that fails the calling test on error.
std::vector<PageRange> CollectOrDie(DirtyTracker& t, const TestRegion& r);

}  // namespace spare::region::testing
