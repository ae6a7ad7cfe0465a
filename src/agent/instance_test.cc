// Instance: a restart's new apply chain takes over the old chain's mappings
// of the same image, so the loop never unmaps gigabytes at an attach (235 ms
// for a 4 GiB image here, bench/restart_bench.py); a released image's chain
// goes with its mappings.
#include "agent/instance.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

namespace spare::agent {
namespace {

bool Mapped(void* p) {
  unsigned char v;
  return ::mincore(p, 4096, &v) == 0;  // ENOMEM once unmapped
}

TEST(InstanceTest, ARestartKeepsTheImageMappings) {
  Instance inst;
  inst.rec.epoch = 7;
  inst.ResetImageState();
  void* p = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  inst.chain->maps.push_back({static_cast<std::byte*>(p), 1 << 20, 1, 2});
  std::weak_ptr<ApplyChain> old = inst.chain;

  inst.rec.epoch = 9;
  inst.ResetImageState();  // the new process attached
  EXPECT_TRUE(old.expired()) << "the old chain should be gone";
  ASSERT_EQ(inst.chain->maps.size(), 1u);
  EXPECT_EQ(inst.chain->maps[0].base, p);
  EXPECT_EQ(inst.chain->epoch, 9u);
  EXPECT_TRUE(Mapped(p)) << "the old chain unmapped the image";

  std::shared_ptr<ApplyChain> released = inst.ReleaseImage();
  EXPECT_EQ(inst.chain, nullptr);
  ASSERT_NE(released, nullptr);
  EXPECT_TRUE(Mapped(p)) << "released chains are dropped by the caller (off the loop)";
  released.reset();
  EXPECT_FALSE(Mapped(p)) << "a dropped chain keeps its mapping";
}

}  // namespace
}  // namespace spare::agent
