#include "region/test_util.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <utility>

namespace spare::region {

void PrintTo(const PageRange& r, std::ostream* os) {
  *os << std::hex << "[0x" << r.start << ", 0x" << r.end << ")" << std::dec;
}

}  // namespace spare::region

namespace spare::region::testing {

std::string UniqueName(const char* what) {
  static std::atomic<int> counter{0};
  return std::string(what) + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

Result<TestRegion> TestRegion::MemfdPrivate(size_t pages) {
  const std::string name = UniqueName("memfd");
  const size_t len = pages * kPageSize;
  SPARE_ASSIGN_OR_RETURN(UniqueFd fd, CreateMemfd(name, len));
  SPARE_ASSIGN_OR_RETURN(void* base,
                         MapPrivateFixed(fd.get(), DeriveAddress("region_test", name, len), len));
  return TestRegion(std::move(fd), base, len);
}

Result<TestRegion> TestRegion::Anonymous(size_t pages) {
  const std::string name = UniqueName("anon");
  const size_t len = pages * kPageSize;
  SPARE_ASSIGN_OR_RETURN(void* base,
                         MapAnonymousFixed(DeriveAddress("region_test", name, len), len));
  return TestRegion(UniqueFd(), base, len);
}

TestRegion::TestRegion(TestRegion&& o) noexcept
    : fd_(std::move(o.fd_)), base_(std::exchange(o.base_, nullptr)), len_(o.len_) {}

TestRegion::~TestRegion() {
  if (base_ != nullptr) ::munmap(base_, len_);
}

std::vector<PageRange> CollectOrDie(DirtyTracker& t, const TestRegion& r) {
  std::vector<PageRange> out;
  Status st = t.Collect(r.base(), r.len(), &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

}  // namespace spare::region::testing
