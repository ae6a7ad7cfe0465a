// The agent's protocol handlers against a real socketpair: bad frames, bad
// bodies, stale generations and out-of-order epochs are refused with an
// Error that names the problem, and nothing changes.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include "agent/agent.h"
#include "agent/state.h"
#include "agent/test_dir.h"
#include "epoch/staging.h"
#include "region/mapping.h"
#include "standby/standby.h"

#include <atomic>
#include <thread>

namespace spare::agent {
namespace {

using ipc::Message;
using ipc::MsgType;

// "Launches" the test process itself, so the test can attach with its own
// pid (the agent checks the socket peer's pid).
// With stand_in, the pidfd the agent gets is a paused child's, so a test
// can watch the agent kill "the instance" without killing itself.
class SelfLauncher : public Launcher {
 public:
  ~SelfLauncher() override {
    if (stand_in_pid > 0 && ::kill(stand_in_pid, SIGKILL) == 0) ::waitpid(stand_in_pid, nullptr, 0);
  }
  Result<Launched> Launch(const LaunchRequest& req) override {
    requests.push_back(req);
    pid_t target = ::getpid();
    if (stand_in) {
      stand_in_pid = ::fork();
      if (stand_in_pid == 0) {
        ::pause();
        ::_exit(0);
      }
      target = stand_in_pid;
    }
    SPARE_ASSIGN_OR_RETURN(UniqueFd pidfd, PidfdOpen(target));
    return Launched{::getpid(), std::move(pidfd), /*is_child=*/false};
  }
  std::vector<LaunchRequest> requests;
  bool stand_in = false;
  pid_t stand_in_pid = 0;
};

Message Make(MsgType type, nlohmann::json body, uint64_t generation = 0) {
  Message m;
  m.type = type;
  m.body = std::move(body);
  m.generation = generation;
  return m;
}

class ProtocolTest : public AgentDirTest {
 protected:
  void SetUp() override {
    AgentDirTest::SetUp();
    auto launcher = std::make_unique<SelfLauncher>();
    launcher_ = launcher.get();
    AgentOptions o;
    o.slot_count = 4;
    o.slot_size = 256 * 1024;
    // Runs on the agent's apply worker; tests set write_ before they commit.
    o.apply_write = [this](int fd, const void* buf, size_t n, off_t off) {
      return write_ ? write_(fd, buf, n, off) : ::pwrite(fd, buf, n, off);
    };
    Configure(o);
    Status st = Start(o, std::move(launcher));
    ASSERT_TRUE(st.ok()) << st.ToString();
    cli_ = Connect();
    inst_ = Connect();
  }

  virtual void Configure(AgentOptions&) {}
  std::function<void()> pump_extra_;  // run with every agent poll (a standby)

  // One end served by the agent, the other returned to the test.
  UniqueFd Connect() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    EXPECT_TRUE(agent_->AddConnection(UniqueFd(sv[0])).ok());
    return UniqueFd(sv[1]);
  }

  void Pump() {
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(agent_->PollOnce(0).ok());
      if (pump_extra_) pump_extra_();
    }
  }

  // Waits (pumping the agent) for the next message on `sock`.
  std::optional<Message> Next(int sock, int timeout_ms = 2000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < end) {
      EXPECT_TRUE(agent_->PollOnce(pump_extra_ ? 1 : 5).ok());
      if (pump_extra_) pump_extra_();
      auto r = ipc::Receive(sock, /*dont_wait=*/true);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return std::nullopt;
      if (r->has_value()) return std::move(**r);
    }
    return std::nullopt;
  }

  Message Exchange(int sock, const Message& m) {
    EXPECT_TRUE(ipc::Send(sock, m).ok());
    auto reply = Next(sock);
    EXPECT_TRUE(reply.has_value()) << "no answer to " << ipc::MsgTypeName(m.type);
    return reply ? std::move(*reply) : Message{};
  }

  // Expects an Error with `code` whose message contains `needle`.
  void ExpectError(const Message& reply, Code code, const std::string& needle) {
    ASSERT_EQ(reply.type, MsgType::kError) << reply.body.dump();
    Status st = ipc::StatusOf(reply);
    EXPECT_EQ(st.code(), code) << st.ToString();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.ToString();
  }

  void StartInstance(const std::string& policy = "local") {
    ASSERT_TRUE(ipc::Send(cli_.get(), Make(MsgType::kRun, {{"id", "t1"},
                                                           {"policy", policy},
                                                           {"argv", {"/bin/true"}},
                                                           {"env", {{"A", "1"}}},
                                                           {"cwd", "/"}}))
                    .ok());
    Pump();
    const Instance* inst = agent_->Find("t1");
    ASSERT_NE(inst, nullptr);
    ASSERT_EQ(inst->rec.state, InstanceState::kStarting);
    ASSERT_EQ(inst->rec.generation, 1u);
  }

  nlohmann::json AttachBody(int64_t pid) {
    return {{"id", "t1"},
            {"pid", pid},
            {"reattach", false},
            {"tracker", "mprotect"},
            {"durable_epoch", 0}};
  }

  // Attaches as generation 1; maps the staging area it gets.
  void Attach() {
    Message ok = Exchange(inst_.get(), Make(MsgType::kAttach, AttachBody(::getpid()), 1));
    ASSERT_EQ(ok.type, MsgType::kOk) << ok.body.dump();
    ASSERT_EQ(ok.fds.size(), 1u);
    EXPECT_EQ(ok.body["epoch"], 0);
    EXPECT_EQ(ok.body["resumed"], false);
    EXPECT_EQ(ok.body["slot_count"], 4);
    size_t bytes = epoch::StagingBytes(4, 256 * 1024);
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, ok.fds[0].get(), 0);
    ASSERT_NE(base, MAP_FAILED);
    auto view = epoch::OpenStaging(static_cast<std::byte*>(base), bytes);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    view_ = view.value();
    // The `spare run` that launched it is answered now.
    auto run = Next(cli_.get());
    ASSERT_TRUE(run.has_value());
    ASSERT_EQ(run->type, MsgType::kOk) << run->body.dump();
    EXPECT_EQ(run->body["pid"], ::getpid());
    EXPECT_EQ(run->body["generation"], 1);
  }

  // Creates region "heap" (1 MiB) and returns its memfd.
  UniqueFd Heap() {
    Message r =
        Exchange(inst_.get(),
                 Make(MsgType::kRegion, {{"name", "heap"}, {"size", 1 << 20}, {"address", 0}}, 1));
    EXPECT_EQ(r.type, MsgType::kOk) << r.body.dump();
    return r.fds.empty() ? UniqueFd() : std::move(r.fds[0]);
  }
  // Fills slot 0 with epoch `e` by `generation`: pages of `fill` at each
  // page offset given, and the record "rec-<e>".
  void Fill(uint64_t e, std::vector<uint64_t> pages, char fill, uint64_t generation = 1) {
    page_ = std::string(4096, fill);
    std::vector<epoch::DirtyRun> runs;
    for (uint64_t p : pages)
      runs.push_back({0, reinterpret_cast<const std::byte*>(page_.data()), p * 4096, 4096});
    record_ = "rec-" + std::to_string(e);
    auto plan = epoch::PlanEpoch(view_, runs, record_.size());
    ASSERT_EQ(plan.parts, 1u);
    epoch::FillEpoch(view_, generation, e, 0, plan, runs,
                     std::as_bytes(std::span(record_.data(), record_.size())));
  }
  static Message CommitMsg(uint64_t e) {
    return Make(MsgType::kCommit, {{"epoch", e}, {"first_slot", 0}, {"parts", 1}}, 1);
  }
  static char ImageAt(int memfd, uint64_t page) {
    char c = 0;
    EXPECT_EQ(::pread(memfd, &c, 1, static_cast<off_t>(page * 4096)), 1);
    return c;
  }

  std::function<ssize_t(int, const void*, size_t, off_t)> write_;
  std::string page_, record_;
  SelfLauncher* launcher_ = nullptr;
  UniqueFd cli_, inst_;
  epoch::StagingView view_;
};

TEST_F(ProtocolTest, GarbageFramesAreRefusedAndTheConnectionKept) {
  for (std::string junk : {std::string("hello"), std::string(64, '\0'), std::string(5000, 'x')}) {
    ASSERT_EQ(::send(cli_.get(), junk.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
    auto reply = Next(cli_.get());
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(ipc::StatusOf(*reply).code(), Code::kBadMessage);
  }
  // A valid frame with a corrupted checksum.
  auto bytes = ipc::Encode(Make(MsgType::kStatus, nlohmann::json::object()));
  ASSERT_TRUE(bytes.ok());
  std::string frame = bytes.value();
  frame[24] ^= 1;
  ASSERT_GT(::send(cli_.get(), frame.data(), frame.size(), 0), 0);
  ExpectError(*Next(cli_.get()), Code::kBadMessage, "checksum");
  // Same connection still works.
  Message ok = Exchange(cli_.get(), Make(MsgType::kStatus, nlohmann::json::object()));
  EXPECT_EQ(ok.type, MsgType::kOk);
  EXPECT_TRUE(ok.body["instances"].empty());
}

TEST_F(ProtocolTest, BadBodiesNameTheField) {
  ExpectError(Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "x"}, {"policy", "local"}})),
              Code::kBadMessage, "argv");
  ExpectError(
      Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "x"}, {"policy", "local"}, {"argv", 5}})),
      Code::kBadMessage, "argv");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "x"},
                                                        {"policy", "local"},
                                                        {"argv", {"/bin/true"}},
                                                        {"env", {{"A", 1}}},
                                                        {"cwd", "/"}})),
              Code::kBadMessage, "env");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "../x"},
                                                        {"policy", "local"},
                                                        {"argv", {"/bin/true"}},
                                                        {"env", nlohmann::json::object()},
                                                        {"cwd", "/"}})),
              Code::kInvalidArgument, "id");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "x"},
                                                        {"policy", "cold"},
                                                        {"argv", {"/bin/true"}},
                                                        {"env", nlohmann::json::object()},
                                                        {"cwd", "/"}})),
              Code::kUnsupported, "not implemented yet");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kStop, {{"id", 7}})), Code::kBadMessage, "id");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kStop, {{"id", "nosuch"}})), Code::kNotFound,
              "nosuch");
  ExpectError(Exchange(cli_.get(), Make(MsgType::kOk, nlohmann::json::object())), Code::kBadMessage,
              "unexpected Ok");
  ExpectError(
      Exchange(cli_.get(), Make(MsgType::kCommit, {{"epoch", 1}, {"first_slot", 0}, {"parts", 1}})),
      Code::kFailedPrecondition, "before Attach");
  EXPECT_EQ(agent_->Find("x"), nullptr);
  EXPECT_TRUE(launcher_->requests.empty());
}

// A Takeover (from the standby on this host) is checked in full before
// anything is kept: a malformed one is refused by name and leaves no
// instance behind.
TEST_F(ProtocolTest, ABadTakeoverIsRefusedAndChangesNothing) {
  auto takeover = [](nlohmann::json spec) {
    Message m = Make(MsgType::kTakeover, {{"id", "r1"}, {"epoch", 3}, {"generation", 2},
                                          {"spec", std::move(spec)}, {"from", "agent:a"}});
    m.blob = "rec-3";
    return m;
  };
  const nlohmann::json spec = {{"argv", {"/bin/true"}},
                               {"cwd", "/"},
                               {"env", nlohmann::json::object()},
                               {"regions", {{{"name", "kv"}, {"index", 0},
                                             {"address", 0x200000000000ULL}, {"size", 1 << 20}}}}};
  // No spec at all.
  Message bare = takeover(spec);
  bare.body.erase("spec");
  ExpectError(Exchange(cli_.get(), bare), Code::kBadMessage, "\"spec\" is not an object");
  // A region, but no fd for it.
  ExpectError(Exchange(cli_.get(), takeover(spec)), Code::kInvalidArgument,
              "carried 0 fds for 1 regions");
  // An fd that is not sealed.
  {
    Message m = takeover(spec);
    m.fds.push_back(UniqueFd(::memfd_create("unsealed", MFD_CLOEXEC)));
    ASSERT_EQ(::ftruncate(m.fds[0].get(), 1 << 20), 0);
    Message reply = Exchange(cli_.get(), m);
    ASSERT_EQ(reply.type, MsgType::kError) << reply.body.dump();
    EXPECT_NE(ipc::StatusOf(reply).message().find("replica of kv"), std::string::npos)
        << ipc::StatusOf(reply).ToString();
  }
  // A region at an address that is not page aligned, a sealed fd too small.
  {
    nlohmann::json odd = spec;
    odd["regions"][0]["address"] = 0x200000000001ULL;
    Message m = takeover(odd);
    auto fd = region::CreateMemfd("replica", 1 << 20);
    ASSERT_TRUE(fd.ok());
    m.fds.push_back(std::move(fd).value());
    ExpectError(Exchange(cli_.get(), m), Code::kInvalidArgument, "");
    Message small = takeover(spec);
    auto tiny = region::CreateMemfd("replica", 4096);
    ASSERT_TRUE(tiny.ok());
    small.fds.push_back(std::move(tiny).value());
    ExpectError(Exchange(cli_.get(), small), Code::kInvalidArgument, "4096 bytes, the region");
  }
  // Generation 0 and a bad id.
  Message zero = takeover(spec);
  zero.body["generation"] = 0;
  ExpectError(Exchange(cli_.get(), zero), Code::kInvalidArgument, "generation 0");
  Message badid = takeover(spec);
  badid.body["id"] = "../x";
  ExpectError(Exchange(cli_.get(), badid), Code::kInvalidArgument, "");
  EXPECT_EQ(agent_->Find("r1"), nullptr) << "a refused Takeover left an instance";
}

TEST_F(ProtocolTest, AttachChecksGenerationAndPid) {
  StartInstance();
  ExpectError(Exchange(inst_.get(), Make(MsgType::kAttach, AttachBody(::getpid()), 0)),
              Code::kStaleGeneration, "generation 0");
  ExpectError(Exchange(inst_.get(), Make(MsgType::kAttach, AttachBody(::getpid() + 1), 1)),
              Code::kFailedPrecondition, "pid");
  nlohmann::json unknown = AttachBody(::getpid());
  unknown["id"] = "nope";
  ExpectError(Exchange(inst_.get(), Make(MsgType::kAttach, unknown, 1)), Code::kNotFound, "nope");
  nlohmann::json bad = AttachBody(::getpid());
  bad["reattach"] = "yes";
  ExpectError(Exchange(inst_.get(), Make(MsgType::kAttach, bad, 1)), Code::kBadMessage, "reattach");
  EXPECT_EQ(agent_->Find("t1")->rec.state, InstanceState::kStarting);
  EXPECT_FALSE(agent_->Find("t1")->conn.valid());
  // The `spare run` is still waiting.
  auto r = ipc::Receive(cli_.get(), true);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());

  Attach();
  EXPECT_EQ(agent_->Find("t1")->rec.state, InstanceState::kRunning);
  agent_->WaitIdle();  // state.json is written on the io worker
  auto saved = LoadState(dir_ + "/state.json");
  ASSERT_TRUE(saved.ok() && saved.value());
  ASSERT_EQ(saved.value()->instances.size(), 1u);
  EXPECT_EQ(saved.value()->instances[0].state, InstanceState::kRunning);
  // The launch got the agent's variables on top of the caller's env.
  ASSERT_EQ(launcher_->requests.size(), 1u);
  const auto& env = launcher_->requests[0].env;
  EXPECT_NE(std::find(env.begin(), env.end(), "SPARE_GENERATION=1"), env.end());
  EXPECT_NE(std::find(env.begin(), env.end(), "SPARE_INSTANCE=t1"), env.end());
  EXPECT_NE(std::find(env.begin(), env.end(), "A=1"), env.end());

  ExpectError(Exchange(cli_.get(), Make(MsgType::kRun, {{"id", "t1"},
                                                        {"policy", "local"},
                                                        {"argv", {"/bin/true"}},
                                                        {"env", nlohmann::json::object()},
                                                        {"cwd", "/"}})),
              Code::kAlreadyExists, "t1");
}

TEST_F(ProtocolTest, RegionsKeepTheirSize) {
  StartInstance();
  Attach();
  Message r = Exchange(inst_.get(), Make(MsgType::kRegion,
                                         {{"name", "heap"}, {"size", 1 << 20}, {"address", 0}}, 1));
  ASSERT_EQ(r.type, MsgType::kOk) << r.body.dump();
  ASSERT_EQ(r.fds.size(), 1u);
  EXPECT_EQ(r.body["index"], 0);
  EXPECT_EQ(r.body["existed"], false);
  uint64_t address = r.body["address"];
  EXPECT_EQ(address, region::DeriveAddress("t1", "heap", 1 << 20));
  ExpectError(
      Exchange(inst_.get(),
               Make(MsgType::kRegion, {{"name", "heap"}, {"size", 2048}, {"address", 0}}, 1)),
      Code::kInvalidArgument, "region heap is 1048576 bytes in the committed image, asked 2048");
  Message again =
      Exchange(inst_.get(),
               Make(MsgType::kRegion, {{"name", "heap"}, {"size", 1 << 20}, {"address", 0}}, 1));
  ASSERT_EQ(again.type, MsgType::kOk);
  EXPECT_EQ(again.body["existed"], true);
  EXPECT_EQ(again.body["address"], address);
  ExpectError(Exchange(inst_.get(), Make(MsgType::kRegion,
                                         {{"name", "x"}, {"size", 4096}, {"address", 12345}}, 1)),
              Code::kInvalidArgument, "page aligned");
  EXPECT_EQ(agent_->Find("t1")->rec.regions.size(), 1u);
}

TEST_F(ProtocolTest, CommitsApplyInOrderOnly) {
  StartInstance();
  Attach();
  Message r = Exchange(inst_.get(), Make(MsgType::kRegion,
                                         {{"name", "heap"}, {"size", 1 << 20}, {"address", 0}}, 1));
  ASSERT_EQ(r.type, MsgType::kOk);
  int memfd = r.fds[0].get();

  auto commit = [&](uint64_t epoch, uint64_t generation) {
    return Make(MsgType::kCommit, {{"epoch", epoch}, {"first_slot", 0}, {"parts", 1}}, generation);
  };
  // Out of order: nothing applied, the error names both epochs.
  Message torn = Exchange(inst_.get(), commit(5, 1));
  ExpectError(torn, Code::kTornEpoch, "epoch 5 does not follow epoch 0");
  EXPECT_EQ(torn.body["epoch"], 5);
  ExpectError(Exchange(inst_.get(), commit(1, 0)), Code::kStaleGeneration, "generation 0");
  ExpectError(Exchange(inst_.get(), Make(MsgType::kCommit, {{"epoch", "one"}}, 1)),
              Code::kBadMessage, "epoch");
  // Epoch 1 in slot 0 holds no valid slot yet: refused by validation.
  EXPECT_EQ(Exchange(inst_.get(), commit(1, 1)).type, MsgType::kError);
  EXPECT_EQ(agent_->Find("t1")->rec.epoch, 0u);

  // A real epoch: one page of 'A's at offset 8192, with a record.
  std::string page(4096, 'A');
  epoch::DirtyRun run{0, reinterpret_cast<const std::byte*>(page.data()), 8192, 4096};
  std::string record = "resume here";
  auto plan = epoch::PlanEpoch(view_, std::span(&run, 1), record.size());
  ASSERT_EQ(plan.parts, 1u);
  epoch::FillEpoch(view_, 1, 1, 0, plan, std::span(&run, 1),
                   std::as_bytes(std::span(record.data(), record.size())));
  Message released = Exchange(inst_.get(), commit(1, 1));
  ASSERT_EQ(released.type, MsgType::kReleased) << released.body.dump();
  EXPECT_EQ(released.body["epoch"], 1);
  auto durable = Next(inst_.get());
  ASSERT_TRUE(durable.has_value());
  ASSERT_EQ(durable->type, MsgType::kDurable) << durable->body.dump();
  EXPECT_EQ(durable->body["epoch"], 1);
  const Instance* inst = agent_->Find("t1");
  EXPECT_EQ(inst->rec.epoch, 1u);
  EXPECT_EQ(inst->record, record);
  EXPECT_EQ(inst->bytes_applied, 4096u);
  char got[4096];
  ASSERT_EQ(::pread(memfd, got, sizeof(got), 8192), 4096);
  EXPECT_EQ(std::string(got, 4096), page);
  // Re-sent (e.g. after a reattach): answered again, not applied again.
  Message dup = Exchange(inst_.get(), commit(1, 1));
  ASSERT_EQ(dup.type, MsgType::kReleased);
  EXPECT_EQ(dup.body["epoch"], 1);
  ASSERT_EQ(Next(inst_.get())->type, MsgType::kDurable);
  EXPECT_EQ(agent_->Find("t1")->epochs_applied, 1u);
}

// Issue 6 item 4: a slot names the generation that filled it and carries a
// hash of its data; either mismatch is refused with a named error and
// nothing is written.
TEST_F(ProtocolTest, SlotsFromAnotherGenerationOrWithBadDataAreRefused) {
  StartInstance();
  Attach();
  UniqueFd heap = Heap();
  Fill(1, {2}, 'G', /*generation=*/7);
  ExpectError(Exchange(inst_.get(), CommitMsg(1)), Code::kStaleGeneration,
              "filled by generation 7, the instance is at generation 1");
  EXPECT_EQ(ImageAt(heap.get(), 2), 0);
  Fill(1, {2, 3}, 'D');
  // Flip one byte of page data after the copy: the table hash still
  // matches, the data hash does not.
  auto* h = reinterpret_cast<const epoch::SlotHeader*>(view_.slot(0));
  view_.slot(0)[h->used - 100] ^= std::byte{1};
  ExpectError(Exchange(inst_.get(), CommitMsg(1)), Code::kChecksumMismatch, "page data hash");
  EXPECT_EQ(ImageAt(heap.get(), 2), 0);
  EXPECT_EQ(ImageAt(heap.get(), 3), 0);
  EXPECT_EQ(agent_->Find("t1")->rec.epoch, 0u);
  // Refused epochs may be sent again, and then apply.
  Fill(1, {2, 3}, 'D');
  EXPECT_EQ(Exchange(inst_.get(), CommitMsg(1)).type, MsgType::kReleased);
  EXPECT_EQ(ImageAt(heap.get(), 3), 'D');
}

// Issue 6 item 3: a write that fails once is retried from the start of the
// epoch and the epoch applies; the slots are answered only after that.
TEST_F(ProtocolTest, FailedApplyIsRetriedFromTheStart) {
  StartInstance();
  Attach();
  UniqueFd heap = Heap();
  std::atomic<int> calls{0};
  write_ = [&](int fd, const void* buf, size_t n, off_t off) -> ssize_t {
    if (++calls == 2) {  // the second write of the first attempt
      errno = ENOSPC;
      return -1;
    }
    return ::pwrite(fd, buf, n, off);
  };
  Fill(1, {4, 6}, 'R');  // two runs: two writes per attempt
  Message released = Exchange(inst_.get(), CommitMsg(1));
  ASSERT_EQ(released.type, MsgType::kReleased) << released.body.dump();
  ASSERT_EQ(Next(inst_.get())->type, MsgType::kDurable);
  EXPECT_EQ(calls.load(), 4);  // 1 ok + 1 failed, then 2 ok
  EXPECT_EQ(ImageAt(heap.get(), 4), 'R');
  EXPECT_EQ(ImageAt(heap.get(), 6), 'R');
  const Instance* inst = agent_->Find("t1");
  EXPECT_EQ(inst->apply_retries, 1u);
  EXPECT_EQ(inst->rec.epoch, 1u);
  EXPECT_EQ(inst->record, "rec-1");
  EXPECT_FALSE(inst->rec.image_torn);
}

// Issue 6 item 3: a write that keeps failing leaves the image between two
// epochs. It is marked torn (persisted), the instance fails with a reason
// that says what happened and what to do, the epoch is never made durable
// (so no output of it reaches a client), and nothing resumes from it.
TEST_F(ProtocolTest, ApplyThatCannotCompleteMarksTheImageTorn) {
  launcher_->stand_in = true;  // the agent SIGKILLs a failed instance
  StartInstance();
  Attach();
  UniqueFd heap = Heap();
  Fill(1, {1}, 'a');
  ASSERT_EQ(Exchange(inst_.get(), CommitMsg(1)).type, MsgType::kReleased);
  ASSERT_EQ(Next(inst_.get())->type, MsgType::kDurable);
  std::atomic<int> calls{0};
  write_ = [&](int fd, const void* buf, size_t n, off_t off) -> ssize_t {
    if (++calls % 2 == 0) {  // the second write of every attempt
      errno = EIO;
      return -1;
    }
    return ::pwrite(fd, buf, n, off);
  };
  Fill(2, {1, 5}, 'b');
  Message refused = Exchange(inst_.get(), CommitMsg(2));
  ExpectError(refused, Code::kTornImage, "torn");
  EXPECT_EQ(refused.body["epoch"], 2);
  EXPECT_EQ(calls.load(), 6);  // three attempts
  // Half of epoch 2 is in the image: that is why nothing may resume from it.
  EXPECT_EQ(ImageAt(heap.get(), 1), 'b');
  EXPECT_EQ(ImageAt(heap.get(), 5), 0);
  // No Durable for epoch 2, ever: the agent kills the instance and closes
  // its socket; nothing but that close follows the Error.
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(agent_->PollOnce(5).ok());
    auto more = ipc::Receive(inst_.get(), /*dont_wait=*/true);
    if (!more.ok()) break;  // closed
    if (more->has_value()) {
      ADD_FAILURE() << "after the torn epoch: " << ipc::MsgTypeName((*more)->type);
    }
  }
  agent_->WaitIdle();
  const Instance* inst = agent_->Find("t1");
  EXPECT_TRUE(inst->rec.image_torn);
  EXPECT_EQ(inst->rec.state, InstanceState::kFailed);
  EXPECT_EQ(inst->rec.epoch, 1u);
  EXPECT_NE(inst->rec.reason.find("Input/output error"), std::string::npos) << inst->rec.reason;
  EXPECT_NE(inst->rec.reason.find("spare stop t1"), std::string::npos) << inst->rec.reason;
  auto saved = LoadState(dir_ + "/state.json");
  ASSERT_TRUE(saved.ok() && saved.value()) << saved.status().ToString();
  EXPECT_TRUE(saved.value()->instances.at(0).image_torn);
  // Nothing attaches to it again.
  UniqueFd again = Connect();
  ExpectError(Exchange(again.get(), Make(MsgType::kAttach, AttachBody(::getpid()), 1)),
              Code::kFailedPrecondition, "failed");
  // And the status says so.
  Message st = Exchange(cli_.get(), Make(MsgType::kStatus, nlohmann::json::object()));
  EXPECT_EQ(st.body["instances"][0]["image_torn"], true);
  // The agent killed the process, and did not relaunch it.
  int status = 0;
  ASSERT_EQ(::waitpid(launcher_->stand_in_pid, &status, 0), launcher_->stand_in_pid);
  launcher_->stand_in_pid = 0;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(agent_->PollOnce(5).ok());
  EXPECT_EQ(launcher_->requests.size(), 1u);
  EXPECT_EQ(agent_->Find("t1")->rec.state, InstanceState::kFailed);
}

// Issue 6 item 5: the loop answers while an epoch is being applied. A
// 400 ms write stalls the apply worker, not the loop: Status is answered
// at once, and the epoch's answer comes when the write is done.
TEST_F(ProtocolTest, LoopAnswersWhileAnApplyIsSlow) {
  StartInstance();
  Attach();
  UniqueFd heap = Heap();
  write_ = [&](int fd, const void* buf, size_t n, off_t off) -> ssize_t {
    ::usleep(400'000);
    return ::pwrite(fd, buf, n, off);
  };
  Fill(1, {0}, 's');
  ASSERT_TRUE(ipc::Send(inst_.get(), CommitMsg(1)).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(agent_->PollOnce(5).ok());  // the Commit is taken
  auto t0 = std::chrono::steady_clock::now();
  Message st = Exchange(cli_.get(), Make(MsgType::kStatus, nlohmann::json::object()));
  auto ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(st.type, MsgType::kOk);
  EXPECT_LT(ms, 200) << "Status waited behind the apply";
  EXPECT_EQ(st.body["instances"][0]["epochs_queued"], 1);
  EXPECT_EQ(st.body["instances"][0]["durable_epoch"], 0);
  auto released = Next(inst_.get(), 5000);
  ASSERT_TRUE(released.has_value());
  EXPECT_EQ(released->type, MsgType::kReleased);
  EXPECT_EQ(ImageAt(heap.get(), 0), 's');
}

TEST_F(ProtocolTest, ConfigCheckpoints) {
  StartInstance();
  Attach();
  Message put = Make(MsgType::kConfigPut, {{"key", "shards"}, {"fingerprint", 42}}, 1);
  put.blob = "a,b,c";
  EXPECT_EQ(Exchange(inst_.get(), put).type, MsgType::kOk);
  Message hit =
      Exchange(inst_.get(), Make(MsgType::kConfigGet, {{"key", "shards"}, {"fingerprint", 42}}, 1));
  EXPECT_EQ(hit.body["state"], "hit");
  EXPECT_EQ(hit.blob, "a,b,c");
  Message stale =
      Exchange(inst_.get(), Make(MsgType::kConfigGet, {{"key", "shards"}, {"fingerprint", 43}}, 1));
  EXPECT_EQ(stale.body["state"], "stale");
  EXPECT_TRUE(stale.blob.empty());
  Message missing =
      Exchange(inst_.get(), Make(MsgType::kConfigGet, {{"key", "other"}, {"fingerprint", 42}}, 1));
  EXPECT_EQ(missing.body["state"], "missing");
  ExpectError(Exchange(inst_.get(), Make(MsgType::kConfigGet, {{"key", "shards"}}, 1)),
              Code::kBadMessage, "fingerprint");
  ExpectError(
      Exchange(cli_.get(), Make(MsgType::kConfigGet, {{"key", "shards"}, {"fingerprint", 42}})),
      Code::kFailedPrecondition, "before Attach");
}

TEST_F(ProtocolTest, StatusReportsTheInstance) {
  StartInstance();
  Attach();
  Message st = Exchange(cli_.get(), Make(MsgType::kStatus, nlohmann::json::object()));
  ASSERT_EQ(st.type, MsgType::kOk);
  const auto& i = st.body["instances"][0];
  EXPECT_EQ(i["id"], "t1");
  EXPECT_EQ(i["state"], "running");
  EXPECT_EQ(i["tracker"], "mprotect");
  EXPECT_EQ(i["generation"], 1);
  EXPECT_TRUE(i["last_restart_ms"].is_null());
  for (const char* key : {"pid", "policy", "epoch", "restarts", "reason", "regions",
                          "epochs_applied", "bytes_applied"})
    EXPECT_TRUE(i.contains(key)) << key;
}

TEST_F(ProtocolTest, SecondAgentOnTheSameDirIsRefused) {
  AgentOptions o;
  o.dir = dir_;
  o.handle_signals = false;
  auto second = Agent::Create(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kAlreadyExists);
  EXPECT_NE(second.status().message().find("already running"), std::string::npos);
}

}  // namespace
}  // namespace spare::agent

namespace spare::agent {
namespace {

// Policy hot against a real standby (in this process, over UCX_TLS=tcp):
// an epoch becomes durable only once the standby applied it, and the
// replica then holds it; while the standby is silent, outputs wait.
// Found by the chaos campaign: an agent that had run about a hundred
// instances (most of them stopped since) answered Status with nothing but
// an encoding error, its answer being over the protocol's 64 KiB. Every
// live instance is listed; ended ones as long as the answer fits, the rest
// counted.
class ManyEndedInstancesTest : public ProtocolTest {
  void Configure(AgentOptions&) override {
    AgentStateValue v;
    for (int i = 0; i < 400; ++i) {
      InstanceRecord r;
      r.spec.id = "ended-" + std::to_string(i);
      r.spec.argv = {"/bin/true", std::string(100, 'x')};
      r.state = InstanceState::kStopped;
      r.reason = "stopped by `spare stop`";
      r.generation = 1;
      v.instances.push_back(r);
    }
    ASSERT_TRUE(SaveState(dir_ + "/state.json", v).ok());
  }
};

TEST_F(ManyEndedInstancesTest, StatusListsEveryLiveInstanceAndCountsWhatDoesNotFit) {
  StartInstance();
  Message st = Exchange(cli_.get(), Make(MsgType::kStatus, nlohmann::json::object()));
  ASSERT_EQ(st.type, MsgType::kOk) << st.body.dump().substr(0, 300);
  EXPECT_LE(st.body.dump().size(), ipc::kMaxJson);
  const auto& list = st.body["instances"];
  bool live = false;
  for (const auto& i : list) live = live || i["id"] == "t1";
  EXPECT_TRUE(live) << "the live instance is missing";
  const uint64_t omitted = st.body["agent"]["instances_omitted"];
  EXPECT_GT(omitted, 0u);
  EXPECT_EQ(list.size() + omitted, 401u) << "every instance is listed or counted";
}

class HotProtocolTest : public ProtocolTest {
 protected:
  void SetUp() override {
    ::setenv("UCX_TLS", "tcp", 1);
    auto s = standby::Standby::Create(standby::StandbyOptions{.name = "spare-host"});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    standby_ = std::move(s).value();
    pump_extra_ = [this] {
      if (standby_running_) standby_->Progress();
    };
    ProtocolTest::SetUp();
  }
  void TearDown() override {
    // The agent's endpoint closes gracefully, which needs the standby to
    // progress meanwhile: from another thread, touching nothing else.
    std::atomic<bool> done{false};
    std::thread pump([&] {
      while (!done) {
        standby_->Progress();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    ProtocolTest::TearDown();
    done = true;
    pump.join();
    standby_.reset();
    ::unsetenv("UCX_TLS");
  }
  void Configure(AgentOptions& o) override {
    o.standby = "127.0.0.1:" + std::to_string(standby_->port());
  }
  char ReplicaAt(uint64_t page) {
    auto areas = standby_->Areas();
    EXPECT_EQ(areas.size(), 1u);
    if (areas.empty()) return 0;
    char c = 0;
    EXPECT_EQ(::pread(areas[0].region_fds[0], &c, 1, static_cast<off_t>(page * 4096)), 1);
    return c;
  }
  std::unique_ptr<standby::Standby> standby_;
  bool standby_running_ = true;
};

TEST_F(HotProtocolTest, AnEpochIsDurableOnlyOnceTheStandbyAppliedIt) {
  StartInstance("hot");
  Attach();
  UniqueFd heap = Heap();
  Fill(1, {2}, 'h');
  ASSERT_TRUE(ipc::Send(inst_.get(), CommitMsg(1)).ok());
  auto released = Next(inst_.get());
  ASSERT_TRUE(released.has_value());
  ASSERT_EQ(released->type, MsgType::kReleased) << released->body.dump();
  EXPECT_EQ(released->body["epoch"], 1);
  auto durable = Next(inst_.get());
  ASSERT_TRUE(durable.has_value());
  ASSERT_EQ(durable->type, MsgType::kDurable) << durable->body.dump();
  EXPECT_EQ(durable->body["epoch"], 1);
  ASSERT_EQ(standby_->Areas().size(), 1u);
  EXPECT_EQ(standby_->Areas()[0].id, "t1");
  EXPECT_EQ(standby_->Areas()[0].epoch, 1u);
  EXPECT_EQ(standby_->Areas()[0].record, "rec-1");
  EXPECT_EQ(ReplicaAt(2), 'h');
  EXPECT_EQ(ImageAt(heap.get(), 2), 'h');

  // The standby stops answering: the epoch is applied locally, but neither
  // its slots nor its outputs are released.
  standby_running_ = false;
  Fill(2, {2}, 'i');
  ASSERT_TRUE(ipc::Send(inst_.get(), CommitMsg(2)).ok());
  EXPECT_FALSE(Next(inst_.get(), 300).has_value()) << "released without the standby";
  EXPECT_EQ(agent_->Find("t1")->rec.epoch, 2u) << "the local apply does not wait";
  EXPECT_EQ(ReplicaAt(2), 'h');
  // It comes back: the epoch ships, applies, and is durable.
  standby_running_ = true;
  released = Next(inst_.get());
  ASSERT_TRUE(released.has_value());
  EXPECT_EQ(released->type, MsgType::kReleased);
  EXPECT_EQ(released->body["epoch"], 2);
  durable = Next(inst_.get());
  ASSERT_TRUE(durable.has_value());
  EXPECT_EQ(durable->type, MsgType::kDurable);
  EXPECT_EQ(durable->body["epoch"], 2);
  EXPECT_EQ(ReplicaAt(2), 'i');
  EXPECT_EQ(standby_->Areas()[0].epoch, 2u);
}

TEST_F(ProtocolTest, PolicyHotNeedsAStandby) {
  ASSERT_TRUE(ipc::Send(cli_.get(), Make(MsgType::kRun, {{"id", "t1"},
                                                         {"policy", "hot"},
                                                         {"argv", {"/bin/true"}},
                                                         {"env", nlohmann::json::object()},
                                                         {"cwd", "/"}}))
                  .ok());
  auto reply = Next(cli_.get());
  ASSERT_TRUE(reply.has_value());
  ExpectError(*reply, Code::kFailedPrecondition, "policy hot needs a standby");
  EXPECT_EQ(agent_->Find("t1"), nullptr);
}

}  // namespace
}  // namespace spare::agent
