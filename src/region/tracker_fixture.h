// region/tracker_fixture.h — a GoogleTest fixture run once per tracker.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>

#include "region/test_util.h"
#include "region/tracker.h"
#include "region/tracker_internal.h"

namespace spare::region::testing {

// Every implementation the tests cover: the uffd tracker in both of its
// modes (see tracker_internal.h) and the mprotect tracker.
enum class Variant { kUffdLazy, kUffdEager, kMprotect };

class TrackerTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (GetParam() != Variant::kMprotect && !UffdTrackerSupported()) {
      GTEST_SKIP() << "uffd-wp tracker not supported by this kernel";
    }
    auto t = GetParam() == Variant::kMprotect ? internal::NewMprotectTracker()
             : GetParam() == Variant::kUffdLazy
                 ? internal::NewUffdTracker(internal::UffdMode::kLazy, GuardPolicy())
                 : internal::NewUffdTracker(internal::UffdMode::kEager, GuardPolicy());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tracker_ = std::move(*t);
    std::printf("[  tracker ] %s%s\n", std::string(tracker_->name()).c_str(),
                GetParam() == Variant::kUffdLazy    ? " (lazy)"
                : GetParam() == Variant::kUffdEager ? " (eager)"
                                                    : "");
  }

  // A fresh region, tracked. Lives until the end of the test; the tracker
  // goes first (members are destroyed in reverse order), so the mprotect
  // tracker never holds a range that is already unmapped.
  TestRegion& Tracked(bool memfd, size_t pages) {
    auto r = memfd ? TestRegion::MemfdPrivate(pages) : TestRegion::Anonymous(pages);
    if (!r.ok()) {
      std::fprintf(stderr, "cannot map test region: %s\n", r.status().ToString().c_str());
      std::abort();
    }
    regions_.push_back(std::move(*r));
    Status st = tracker_->Add(regions_.back().base(), regions_.back().len());
    EXPECT_TRUE(st.ok()) << st.ToString();
    return regions_.back();
  }

  DirtyTracker& tracker() { return *tracker_; }

  // The uffd tracker's chunk guard policy (the default unless a suite
  // overrides it).
  virtual internal::ChunkGuardPolicy GuardPolicy() const { return {}; }

 private:
  std::deque<TestRegion> regions_;
  std::unique_ptr<DirtyTracker> tracker_;
};

inline void PrintTo(Variant v, std::ostream* os) {
  *os << (v == Variant::kUffdLazy    ? "uffd-wp (lazy)"
          : v == Variant::kUffdEager ? "uffd-wp (eager)"
                                     : "mprotect");
}

inline std::string VariantName(const ::testing::TestParamInfo<Variant>& info) {
  switch (info.param) {
    case Variant::kUffdLazy:
      return "uffd";
    case Variant::kUffdEager:
      return "uffd_eager";
    case Variant::kMprotect:
      return "mprotect";
  }
  return "unknown";
}

#define SPARE_INSTANTIATE_TRACKER_TESTS(suite)                                              \
  INSTANTIATE_TEST_SUITE_P(Trackers, suite,                                                 \
                           ::testing::Values(::spare::region::testing::Variant::kUffdLazy,  \
                                             ::spare::region::testing::Variant::kUffdEager, \
                                             ::spare::region::testing::Variant::kMprotect), \
                           ::spare::region::testing::VariantName)

}  // namespace spare::region::testing
