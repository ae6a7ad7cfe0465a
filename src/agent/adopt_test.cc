// A new agent rebuilding its instances from DIR/state.json: live ones are
// adopted and take their committed image back on reattach; dead ones (or
// a reused pid) are failed; an unknown state version stops the agent.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <vector>

#include "agent/agent.h"
#include "common/files.h"
#include "agent/state.h"
#include "agent/test_dir.h"
#include "epoch/staging.h"
#include "region/mapping.h"

namespace spare::agent {
namespace {

using ipc::Message;
using ipc::MsgType;

// A pid that existed and is gone now.
int64_t DeadPid() {
  pid_t pid = ::fork();
  if (pid == 0) _exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

InstanceRecord Record(const std::string& id, int64_t pid, uint64_t start_time) {
  InstanceRecord r;
  r.spec = {id, "local", {"/bin/true"}, {}, "/", 4, 256 * 1024, 5, 60000};
  r.state = InstanceState::kRunning;
  r.pid = pid;
  r.pid_start_time = start_time;
  r.generation = 3;
  r.epoch = 2;
  r.regions = {{"heap", 0, region::DeriveAddress(id, "heap", 1 << 20), 1 << 20}};
  return r;
}

class AdoptTest : public AgentDirTest {
 protected:
  Message Exchange(int sock, const Message& m) {
    EXPECT_TRUE(ipc::Send(sock, m).ok());
    for (int i = 0; i < 400; ++i) {
      EXPECT_TRUE(agent_->PollOnce(5).ok());
      auto r = ipc::Receive(sock, /*dont_wait=*/true);
      if (r.ok() && r->has_value()) return std::move(**r);
    }
    ADD_FAILURE() << "no answer";
    return {};
  }
};

TEST_F(AdoptTest, LiveInstanceIsAdoptedAndReattaches) {
  uint64_t self_start = ProcStartTime(::getpid()).value();
  AgentStateValue v;
  v.instances = {Record("alive", ::getpid(), self_start), Record("dead", DeadPid(), 1),
                 Record("reused", ::getpid(), self_start + 1)};
  ASSERT_TRUE(SaveState(dir_ + "/state.json", v).ok());
  ASSERT_TRUE(Start().ok());

  const Instance* alive = agent_->Find("alive");
  ASSERT_NE(alive, nullptr);
  EXPECT_EQ(alive->rec.state, InstanceState::kAdopting);
  for (const char* id : {"dead", "reused"}) {
    const Instance* inst = agent_->Find(id);
    ASSERT_NE(inst, nullptr);
    EXPECT_EQ(inst->rec.state, InstanceState::kFailed) << id;
    EXPECT_EQ(inst->rec.reason,
              "died while the agent was down; its committed image was lost with it");
    EXPECT_TRUE(inst->rec.regions.empty());
  }

  // The instance hands back what it has mapped: staging, then region 0.
  size_t bytes = epoch::StagingBytes(4, 256 * 1024);
  auto staging = region::CreateMemfd("staging", bytes);
  auto heap = region::CreateMemfd("heap", 1 << 20);
  ASSERT_TRUE(staging.ok() && heap.ok());
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, staging->get(), 0);
  ASSERT_NE(base, MAP_FAILED);
  epoch::StagingView view{static_cast<std::byte*>(base), bytes, 4, 256 * 1024};
  epoch::InitStaging(view);
  ASSERT_EQ(::pwrite(heap->get(), "state", 5, 0), 5);

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_TRUE(agent_->AddConnection(UniqueFd(sv[0])).ok());
  UniqueFd sock(sv[1]);
  Message attach;
  attach.type = MsgType::kAttach;
  attach.generation = 3;
  attach.body = {{"id", "alive"},
                 {"pid", ::getpid()},
                 {"reattach", true},
                 {"tracker", "uffd-wp"},
                 {"durable_epoch", 7}};
  attach.blob = "record of 7";
  // Too few fds: refused, nothing adopted.
  attach.fds.emplace_back(::dup(staging->get()));
  Message refused = Exchange(sock.get(), attach);
  ASSERT_EQ(refused.type, MsgType::kError) << refused.body.dump();
  EXPECT_NE(ipc::StatusOf(refused).message().find("1 regions, so 2 are needed"), std::string::npos)
      << refused.body.dump();
  EXPECT_EQ(agent_->Find("alive")->rec.state, InstanceState::kAdopting);
  EXPECT_FALSE(agent_->Find("alive")->image_held());

  // An unsealed memfd for the region (it could be shrunk under the agent's
  // writes): refused, naming the seals, nothing adopted.
  UniqueFd unsealed(::memfd_create("heap-unsealed", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(unsealed.get(), 1 << 20), 0);
  attach.fds.emplace_back(::dup(unsealed.get()));
  Message not_sealed = Exchange(sock.get(), attach);
  ASSERT_EQ(not_sealed.type, MsgType::kError) << not_sealed.body.dump();
  EXPECT_NE(ipc::StatusOf(not_sealed).message().find("not sealed"), std::string::npos)
      << not_sealed.body.dump();
  EXPECT_FALSE(agent_->Find("alive")->image_held());
  attach.fds.clear();
  attach.fds.emplace_back(::dup(staging->get()));

  attach.fds.emplace_back(::dup(heap->get()));
  Message ok = Exchange(sock.get(), attach);
  ASSERT_EQ(ok.type, MsgType::kOk) << ok.body.dump();
  EXPECT_TRUE(ok.fds.empty()) << "a reattach keeps its own staging mapping";
  alive = agent_->Find("alive");
  EXPECT_EQ(alive->rec.state, InstanceState::kRunning);
  EXPECT_EQ(alive->rec.epoch, 7u);
  EXPECT_EQ(alive->record, "record of 7");
  ASSERT_TRUE(alive->image_held());
  char got[5];
  ASSERT_EQ(::pread(alive->region_fds[0].get(), got, 5, 0), 5);
  EXPECT_EQ(std::string(got, 5), "state");

  // The adopted image is the one regions are served from.
  Message region;
  region.type = MsgType::kRegion;
  region.generation = 3;
  region.body = {{"name", "heap"}, {"size", 1 << 20}, {"address", 0}};
  Message r = Exchange(sock.get(), region);
  ASSERT_EQ(r.type, MsgType::kOk) << r.body.dump();
  EXPECT_EQ(r.body["existed"], true);
  ::munmap(base, bytes);
}

TEST_F(AdoptTest, UnknownStateVersionRefusesToStart) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/state.json", R"({"version": 9, "instances": []})", 0600,
                              Durability::kProcessCrash)
                  .ok());
  Status st = Start();
  EXPECT_EQ(st.code(), Code::kUnsupported);
  EXPECT_NE(st.message().find("state version 9"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("refusing to start"), std::string::npos) << st.message();
}

// The pid can be reused between reading its start time and opening the
// pidfd: the start time is read again after the open, and a changed one
// refuses the adoption (the pidfd would watch the newcomer).
TEST(OpenPidfdIfStartedAt, ChecksBeforeAndAfterTheOpen) {
  const pid_t self = ::getpid();
  const uint64_t start = ProcStartTime(self).value();
  std::vector<int> calls;
  auto reused = [&](pid_t) -> Result<uint64_t> {
    calls.push_back(static_cast<int>(calls.size()));
    return calls.size() == 1 ? start : start + 1;  // reused right after the first read
  };
  auto fd = OpenPidfdIfStartedAt(self, start, reused);
  ASSERT_FALSE(fd.ok()) << "adopted a reused pid";
  EXPECT_EQ(fd.status().code(), Code::kNotFound);
  EXPECT_NE(fd.status().message().find("reused (after opening its pidfd)"), std::string::npos)
      << fd.status().ToString();
  EXPECT_EQ(calls.size(), 2u);

  calls.clear();
  auto wrong = [&](pid_t) -> Result<uint64_t> {
    calls.push_back(0);
    return start + 1;
  };
  fd = OpenPidfdIfStartedAt(self, start, wrong);
  ASSERT_FALSE(fd.ok());
  EXPECT_NE(fd.status().message().find("before opening"), std::string::npos);
  EXPECT_EQ(calls.size(), 1u) << "no pidfd opened for a process that is not ours";

  fd = OpenPidfdIfStartedAt(self, start);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  EXPECT_TRUE(fd->valid());
  EXPECT_FALSE(OpenPidfdIfStartedAt(static_cast<pid_t>(DeadPid()), start).ok());
}

}  // namespace
}  // namespace spare::agent
