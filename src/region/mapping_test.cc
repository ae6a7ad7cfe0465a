// Mappings, derived addresses, tracker selection.
#include "region/mapping.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "region/test_util.h"
#include "region/tracker.h"

namespace spare::region::testing {
namespace {

constexpr uint64_t kGiB = 1ULL << 30;

TEST(RoundUpToPage, RoundsUp) {
  EXPECT_EQ(RoundUpToPage(0), 0u);
  EXPECT_EQ(RoundUpToPage(1), kPageSize);
  EXPECT_EQ(RoundUpToPage(kPageSize), kPageSize);
  EXPECT_EQ(RoundUpToPage(kPageSize + 1), 2 * kPageSize);
}

TEST(DeriveAddress, IsPinnedAcrossBuildsAndHosts) {
  // The address is part of every region's identity: a replacement on another
  // host must map the region where the pointers inside it expect it. If this
  // value changes, existing replicas become unusable.
  EXPECT_EQ(DeriveAddress("kv1", "heap", kGiB), 0x3b6ac0000000ULL);
}

TEST(DeriveAddress, DeterministicAlignedAndInRange) {
  for (size_t size : {size_t{1}, size_t{kGiB}, size_t{64 * kGiB}, size_t{4096 * kGiB}}) {
    for (int i = 0; i < 200; ++i) {
      const std::string region = "r" + std::to_string(i);
      const uint64_t a = DeriveAddress("inst", region, size);
      EXPECT_EQ(a, DeriveAddress("inst", region, size));
      EXPECT_EQ(a % kGiB, 0u);
      EXPECT_GE(a, kVaBase);
      EXPECT_LE(a + size, kVaBase + kVaSpan) << region << " size " << size;
    }
  }
  EXPECT_EQ(DeriveAddress("inst", "all", kVaSpan), kVaBase);  // only one place fits
}

TEST(DeriveAddress, DifferentNamesGetDifferentAddresses) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 100; ++i)
    seen.insert(DeriveAddress("kv1", "region" + std::to_string(i), kGiB));
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_NE(DeriveAddress("kv1", "heap", kGiB), DeriveAddress("kv2", "heap", kGiB));
  // The separator keeps the instance and region parts apart.
  EXPECT_NE(DeriveAddress("ab", "c", kGiB), DeriveAddress("a", "bc", kGiB));
}

TEST(CreateMemfd, SizedAndCloseOnExec) {
  auto fd = CreateMemfd("mapping-test", 3 * kPageSize + 1);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  struct stat st;
  ASSERT_EQ(::fstat(fd->get(), &st), 0);
  EXPECT_EQ(st.st_size, off_t(4 * kPageSize));
  EXPECT_NE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(MapPrivateFixed, MapsAtTheAddressAndKeepsWritesPrivate) {
  auto fd = CreateMemfd("mapping-test", 2 * kPageSize);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  ASSERT_EQ(::pwrite(fd->get(), "committed", 9, 0), 9);
  const uint64_t addr = DeriveAddress("mapping_test", UniqueName("private"), 2 * kPageSize);
  auto p = MapPrivateFixed(fd->get(), addr, 2 * kPageSize);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(reinterpret_cast<uint64_t>(*p), addr);
  char* c = static_cast<char*>(*p);
  EXPECT_EQ(std::string(c, 9), "committed");
  std::memcpy(c, "scribbled", 9);
  char back[9];
  ASSERT_EQ(::pread(fd->get(), back, 9, 0), 9);
  EXPECT_EQ(std::string(back, 9), "committed");
  ::munmap(*p, 2 * kPageSize);
}

TEST(MapPrivateFixed, OccupiedAddressIsResourceExhaustedAndNamed) {
  auto fd = CreateMemfd("mapping-test", kPageSize);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  const uint64_t addr = DeriveAddress("mapping_test", UniqueName("taken"), 16 * kPageSize);
  auto first = MapAnonymousFixed(addr + 4 * kPageSize, kPageSize);
  ASSERT_TRUE(first.ok()) << first.status().ToString();

  auto clash = MapPrivateFixed(fd->get(), addr, 16 * kPageSize);
  ASSERT_FALSE(clash.ok());
  EXPECT_EQ(clash.status().code(), Code::kResourceExhausted);
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(addr));
  EXPECT_NE(clash.status().message().find(hex), std::string::npos) << clash.status().ToString();
  EXPECT_NE(clash.status().message().find("65536 bytes"), std::string::npos)
      << clash.status().ToString();

  auto anon_clash = MapAnonymousFixed(addr + 4 * kPageSize, kPageSize);
  EXPECT_EQ(anon_clash.status().code(), Code::kResourceExhausted);
  ::munmap(*first, kPageSize);
}

TEST(MapPrivateFixed, UnalignedOrEmptyIsInvalid) {
  EXPECT_EQ(MapAnonymousFixed(kVaBase + 1, kPageSize).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(MapAnonymousFixed(kVaBase, 0).status().code(), Code::kInvalidArgument);
}

TEST(MapShared, SharesTheMemfd) {
  auto fd = CreateMemfd("mapping-test", kPageSize);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  auto rw = MapShared(fd->get(), kPageSize, /*writable=*/true);
  auto ro = MapShared(fd->get(), kPageSize, /*writable=*/false);
  ASSERT_TRUE(rw.ok() && ro.ok()) << rw.status().ToString() << ro.status().ToString();
  std::memcpy(*rw, "applied", 7);
  EXPECT_EQ(std::string(static_cast<char*>(*ro), 7), "applied");
  char back[7];
  ASSERT_EQ(::pread(fd->get(), back, 7, 0), 7);
  EXPECT_EQ(std::string(back, 7), "applied");
  ::munmap(*rw, kPageSize);
  ::munmap(*ro, kPageSize);
  EXPECT_EQ(MapShared(-1, kPageSize, true).status().code(), Code::kIoError);
}

// Sets $SPARE_TRACKER for one scope.
class ScopedTrackerEnv {
 public:
  explicit ScopedTrackerEnv(const char* value) {
    if (const char* old = ::getenv("SPARE_TRACKER")) old_ = old;
    if (value) {
      ::setenv("SPARE_TRACKER", value, 1);
    } else {
      ::unsetenv("SPARE_TRACKER");
    }
  }
  ~ScopedTrackerEnv() {
    if (old_) {
      ::setenv("SPARE_TRACKER", old_->c_str(), 1);
    } else {
      ::unsetenv("SPARE_TRACKER");
    }
  }

 private:
  std::optional<std::string> old_;
};

TEST(TrackerKindFromEnv, Parses) {
  struct Case {
    const char* value;
    TrackerKind want;
  };
  for (Case c : {Case{nullptr, TrackerKind::kAuto}, Case{"", TrackerKind::kAuto},
                 Case{"auto", TrackerKind::kAuto}, Case{"uffd", TrackerKind::kUffd},
                 Case{"mprotect", TrackerKind::kMprotect}}) {
    ScopedTrackerEnv env(c.value);
    auto kind = TrackerKindFromEnv();
    ASSERT_TRUE(kind.ok()) << kind.status().ToString();
    EXPECT_EQ(*kind, c.want) << (c.value ? c.value : "(unset)");
  }
}

TEST(TrackerKindFromEnv, BadValueIsInvalidArgumentNamingIt) {
  ScopedTrackerEnv env("softdirty");
  auto kind = TrackerKindFromEnv();
  ASSERT_FALSE(kind.ok());
  EXPECT_EQ(kind.status().code(), Code::kInvalidArgument);
  EXPECT_NE(kind.status().message().find("softdirty"), std::string::npos);
  EXPECT_NE(kind.status().message().find("SPARE_TRACKER"), std::string::npos);
}

TEST(DirtyTrackerCreate, ResolvesKinds) {
  const bool uffd = UffdTrackerSupported();
  std::printf("[  tracker ] uffd-wp supported on this kernel: %s\n", uffd ? "yes" : "no");
  auto a = DirtyTracker::Create(TrackerKind::kAuto);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ((*a)->name(), uffd ? "uffd-wp" : "mprotect");
  auto m = DirtyTracker::Create(TrackerKind::kMprotect);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ((*m)->name(), "mprotect");
  auto u = DirtyTracker::Create(TrackerKind::kUffd);
  if (uffd) {
    ASSERT_TRUE(u.ok()) << u.status().ToString();
    EXPECT_EQ((*u)->name(), "uffd-wp");
  } else {
    EXPECT_EQ(u.status().code(), Code::kUnsupported);
  }
}

}  // namespace
}  // namespace spare::region::testing
