// Standby over real UCX (UCX_TLS=tcp and shm,tcp), with the test as the
// agent: Hello, Reserve, put a slot into the standby's staging, Commit, Ack,
// and the replica holds the epoch. Every bad request — before Hello,
// garbage, unknown handle, old or unreserved generation, an epoch out of
// order, slots outside the area, corrupted data, other geometry — is
// refused with its named error and leaves the replica as it was.
#include "standby/standby.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <deque>
#include <filesystem>
#include <functional>
#include <thread>

#include "ipc/wire.h"

namespace spare::standby {
namespace {

constexpr uint32_t kSlots = 4;
constexpr uint64_t kSlotSize = 256 * 1024;
constexpr uint64_t kRegion = 1 << 20;

class StandbyTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ::setenv("UCX_TLS", GetParam(), 1);
    auto s = Standby::Create(Options());
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    standby_ = std::move(s).value();
    auto w = net::Worker::Create();
    ASSERT_TRUE(w.ok());
    agent_ = std::move(w).value();
    ASSERT_TRUE(agent_
                    ->SetAmHandler(1, [this](net::Endpoint*, std::span<const std::byte> b) {
                      inbox_.emplace_back(b.begin(), b.end());
                    })
                    .ok());
    staging_.resize(epoch::StagingBytes(kSlots, kSlotSize));
    view_ = {staging_.data(), staging_.size(), kSlots, kSlotSize};
    ep_ = Connect();
  }
  void TearDown() override {
    key_.reset();
    ep_.reset();
    extra_.reset();
    Pump([&] { return agent_->closing() == 0; });
    standby_.reset();
    agent_.reset();
    ::unsetenv("UCX_TLS");
  }

  virtual uint32_t TimeoutMs() const { return 100; }
  virtual StandbyOptions Options() {
    return StandbyOptions{.name = "spare-host", .timeout_ms = TimeoutMs()};
  }

  std::unique_ptr<net::Endpoint> Connect() {
    auto ep = agent_->Connect("127.0.0.1", standby_->port(), net::ErrorMode::kNone);
    EXPECT_TRUE(ep.ok()) << ep.status().ToString();
    return ep.ok() ? std::move(ep).value() : nullptr;
  }

  bool Pump(const std::function<bool()>& pred, int ms = 10000) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
      standby_->Progress();
      agent_->Progress();
      if (pred()) return true;
      pollfd p[2] = {{standby_->event_fd(), POLLIN, 0}, {agent_->event_fd(), POLLIN, 0}};
      ::poll(p, 2, 1);
    }
    return false;
  }

  // Sends one frame and returns the answer (a decoded copy).
  hot::Frame Ask(net::Endpoint* ep, hot::Type t, uint64_t instance, uint64_t gen, uint64_t seq,
                 const std::vector<std::byte>& body) {
    EXPECT_TRUE(ep->SendAm(1, hot::Encode(hot::Header{t, 0, instance, gen, seq}, body)).ok());
    return Answer();
  }
  hot::Frame AskRaw(net::Endpoint* ep, const std::vector<std::byte>& bytes) {
    EXPECT_TRUE(ep->SendAm(1, bytes).ok());
    return Answer();
  }
  // The next message that is not one of the standby's heartbeats.
  hot::Frame Answer() {
    for (;;) {
      EXPECT_TRUE(Pump([&] { return !inbox_.empty(); })) << "no answer";
      if (inbox_.empty()) return {};
      last_ = std::move(inbox_.front());
      inbox_.pop_front();
      auto f = hot::Decode(last_);
      EXPECT_TRUE(f.ok()) << f.status().ToString();
      if (!f.ok()) return hot::Frame{};
      if (f->header.type != hot::Type::kHeartbeat) return *f;
    }
  }
  void ExpectError(const hot::Frame& f, Code code, const std::string& needle) {
    ASSERT_EQ(f.header.type, hot::Type::kError) << hot::TypeName(f.header.type);
    auto e = hot::ParseError(f.body);
    ASSERT_TRUE(e.ok());
    EXPECT_EQ(e->code, code) << e->message;
    EXPECT_NE(e->message.find(needle), std::string::npos) << e->message;
  }

  void Hello(net::Endpoint* ep) {
    auto f = Ask(ep, hot::Type::kHello, 0, 0, 1, hot::Body(hot::Hello{"host-a"}));
    ASSERT_EQ(f.header.type, hot::Type::kWelcome);
    auto w = hot::ParseWelcome(f.body);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ(w->standby, "spare-host");
  }
  hot::Reserve Sample() {
    return hot::Reserve{"kv1", {kRegion}, kSlots, kSlotSize, R"({"argv":["spare-kv"]})"};
  }
  // Reserves kv1 for generation `gen`; returns the handle.
  uint64_t Reserve(uint64_t gen) {
    auto f = Ask(ep_.get(), hot::Type::kReserve, 0, gen, 2, hot::Body(Sample()));
    EXPECT_EQ(f.header.type, hot::Type::kReserved) << hot::TypeName(f.header.type);
    auto r = hot::ParseReserved(f.body);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return 0;
    reserved_ = *r;
    key_.reset();
    auto k = ep_->UnpackKey(std::as_bytes(std::span(r->key.data(), r->key.size())));
    EXPECT_TRUE(k.ok()) << k.status().ToString();
    if (k.ok()) key_ = std::move(k).value();
    handle_ = f.header.instance;
    return f.header.instance;
  }
  // Fills slot `slot` with epoch `e` (generation `gen`): `fill` at page
  // `page` of region 0, then puts the whole slot and flushes.
  // Fills slot `slot` of the test's staging with epoch `e`: `fill` at page
  // `page` of region 0, record "rec-E".
  void Fill(uint32_t slot, uint64_t gen, uint64_t e, uint64_t page, char fill) {
    page_.assign(4096, fill);
    std::vector<epoch::DirtyRun> runs{
        {0, reinterpret_cast<const std::byte*>(page_.data()), page * 4096, 4096}};
    std::string record = "rec-" + std::to_string(e);
    auto plan = epoch::PlanEpoch(view_, runs, record.size());
    ASSERT_EQ(plan.parts, 1u);
    epoch::FillEpoch(view_, gen, e, slot, plan, runs,
                     std::as_bytes(std::span(record.data(), record.size())));
  }
  void Stage(uint32_t slot, uint64_t gen, uint64_t e, uint64_t page, char fill,
             bool corrupt = false) {
    Fill(slot, gen, e, page, fill);
    if (corrupt) {
      // Flip a byte of the page data: the slot's data hash no longer matches.
      std::byte* s = view_.slot(slot);
      for (size_t i = 0; i < kSlotSize; ++i)
        if (s[i] == static_cast<std::byte>(fill)) {
          s[i] ^= std::byte{0x20};
          break;
        }
    }
    bool flushed = false;
    const uint64_t remote = reserved_.staging_addr + epoch::kSlotBase + uint64_t{slot} * kSlotSize;
    ASSERT_TRUE(ep_->Put(view_.slot(slot), kSlotSize, remote, *key_).ok());
    ASSERT_TRUE(ep_->Flush([&](const Status& st) { flushed = st.ok(); }).ok());
    ASSERT_TRUE(Pump([&] { return flushed; }));
  }
  // Stage, but the slot goes as Data messages (what an agent sends over TCP).
  void StageByData(uint32_t slot, uint64_t gen, uint64_t e, uint64_t page, char fill) {
    Fill(slot, gen, e, page, fill);
    const uint64_t offset = epoch::kSlotBase + uint64_t{slot} * kSlotSize;
    ASSERT_TRUE(ep_->SendAm(1, hot::EncodeData(hot::Header{hot::Type::kData, 0, handle_, gen, e},
                                               hot::kStagingSpace, offset,
                                               std::span(view_.slot(slot), kSlotSize)))
                    .ok());
  }
  char ReplicaAt(uint64_t page) {
    auto areas = standby_->Areas();
    EXPECT_EQ(areas.size(), 1u);
    char c = 0;
    EXPECT_EQ(::pread(areas[0].region_fds[0], &c, 1, static_cast<off_t>(page * 4096)), 1);
    return c;
  }
  uint64_t ReplicaEpoch() { return standby_->Areas().at(0).epoch; }
  // Hello, Reserve at generation 1, and epoch 1 ('a' at page 3) committed
  // and acknowledged; returns the handle.
  uint64_t FirstEpoch() {
    Hello(ep_.get());
    const uint64_t handle = Reserve(1);
    Stage(0, 1, 1, 3, 'a');
    EXPECT_EQ(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1}))
                  .header.type,
              hot::Type::kAck);
    return handle;
  }

  std::unique_ptr<Standby> standby_;
  std::unique_ptr<net::Worker> agent_;
  std::unique_ptr<net::Endpoint> ep_, extra_;
  std::unique_ptr<net::RemoteKey> key_;
  uint64_t handle_ = 0;  // of the last Reserve
  std::deque<std::vector<std::byte>> inbox_;
  std::vector<std::byte> last_;
  std::vector<std::byte> staging_;
  epoch::StagingView view_;
  hot::Reserved reserved_;
  std::string page_;
};

TEST_P(StandbyTest, CommittedEpochsReachTheReplicaInOrder) {
  Hello(ep_.get());
  const uint64_t handle = Reserve(1);
  ASSERT_NE(handle, 0u);
  EXPECT_EQ(reserved_.replica_epoch, 0u) << "a new area is empty";
  EXPECT_EQ(reserved_.staging_bytes, epoch::StagingBytes(kSlots, kSlotSize));

  Stage(0, 1, 1, 3, 'a');
  EXPECT_EQ(ReplicaAt(3), 0) << "a put alone must not reach the replica";
  auto ack = Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1}));
  ASSERT_EQ(ack.header.type, hot::Type::kAck);
  EXPECT_EQ(ack.header.seq, 1u);
  EXPECT_EQ(ReplicaAt(3), 'a');
  EXPECT_EQ(standby_->Areas()[0].record, "rec-1");

  // The same Commit again: acknowledged, nothing changes.
  ack = Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1}));
  ASSERT_EQ(ack.header.type, hot::Type::kAck);
  EXPECT_EQ(ReplicaEpoch(), 1u);

  Stage(1, 1, 2, 3, 'b');
  ack = Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{1, 1}));
  ASSERT_EQ(ack.header.type, hot::Type::kAck);
  EXPECT_EQ(ReplicaAt(3), 'b');
  EXPECT_EQ(ReplicaEpoch(), 2u);

  // A reconnecting agent reserving again finds the replica where it was.
  EXPECT_EQ(Reserve(1), handle);
  EXPECT_EQ(reserved_.replica_epoch, 2u);
}

TEST_P(StandbyTest, BadRequestsAreRefusedAndChangeNothing) {
  // Before Hello.
  ExpectError(Ask(ep_.get(), hot::Type::kReserve, 0, 1, 2, hot::Body(Sample())),
              Code::kFailedPrecondition, "Reserve before Hello");
  Hello(ep_.get());
  const uint64_t handle = Reserve(1);
  Stage(0, 1, 1, 5, 'x');
  ASSERT_EQ(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1}))
                .header.type,
            hot::Type::kAck);
  ASSERT_EQ(ReplicaAt(5), 'x');

  // Garbage, and a frame with a broken checksum.
  std::vector<std::byte> junk(64, std::byte{0x5a});
  ExpectError(AskRaw(ep_.get(), junk), Code::kBadMessage, "bad magic");
  auto frame = hot::Encode(hot::Header{hot::Type::kCommit, 0, handle, 1, 2},
                           hot::Body(hot::Commit{1, 1}));
  frame.back() ^= std::byte{1};
  ExpectError(AskRaw(ep_.get(), frame), Code::kBadMessage, "checksum");

  Stage(1, 1, 2, 5, 'y');
  // Unknown handle, older and newer generations, out-of-order epoch, slots
  // outside the area.
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle + 7, 1, 2, hot::Body(hot::Commit{1, 1})),
              Code::kNotFound, "no instance with handle");
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 0, 2, hot::Body(hot::Commit{1, 1})),
              Code::kStaleGeneration, "generation 0 is fenced");
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 2, 2, hot::Body(hot::Commit{1, 1})),
              Code::kStaleGeneration, "reserve it again first");
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 3, hot::Body(hot::Commit{1, 1})),
              Code::kTornEpoch, "the replica is at epoch 1");
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{kSlots, 1})),
              Code::kOutOfBounds, "outside the 4 slots");
  // The slot says epoch 2; a Commit naming another slot finds another epoch.
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{2, 1})),
              Code::kTornEpoch, "");
  // Other geometry for the same id, from another agent.
  auto other = Sample();
  other.regions = {kRegion * 2};
  {
    auto ep = Connect();
    auto hello = Ask(ep.get(), hot::Type::kHello, 0, 0, 1, hot::Body(hot::Hello{"host-b"}));
    ASSERT_EQ(hello.header.type, hot::Type::kWelcome);
    ExpectError(Ask(ep.get(), hot::Type::kReserve, 0, 1, 4, hot::Body(other)),
                Code::kInvalidArgument, "by agent host-a; retire it first");
    extra_ = std::move(ep);
  }
  // Corrupted data in staging.
  Stage(1, 1, 2, 5, 'z', /*corrupt=*/true);
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{1, 1})),
              Code::kChecksumMismatch, "");
  EXPECT_EQ(ReplicaAt(5), 'x') << "a refused epoch changed the replica";
  EXPECT_EQ(ReplicaEpoch(), 1u);
  EXPECT_GE(standby_->refused().at("BadMessage"), 2u);

  // A newer generation takes the instance over; the old one is fenced.
  EXPECT_EQ(Reserve(2), handle);
  Stage(1, 1, 2, 5, 'o');
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{1, 1})),
              Code::kStaleGeneration, "owned by generation 2; generation 1 is fenced");
  EXPECT_EQ(ReplicaAt(5), 'x');
  // And the new owner's epoch applies.
  Stage(1, 2, 2, 5, 'n');
  ASSERT_EQ(Ask(ep_.get(), hot::Type::kCommit, handle, 2, 2, hot::Body(hot::Commit{1, 1}))
                .header.type,
            hot::Type::kAck);
  EXPECT_EQ(ReplicaAt(5), 'n');

  // Another agent's connection may not commit to an area it did not reserve.
  extra_ = Connect();
  auto hello = Ask(extra_.get(), hot::Type::kHello, 0, 0, 1, hot::Body(hot::Hello{"host-c"}));
  ASSERT_EQ(hello.header.type, hot::Type::kWelcome);
  ExpectError(Ask(extra_.get(), hot::Type::kCommit, handle, 2, 3, hot::Body(hot::Commit{2, 1})),
              Code::kFailedPrecondition, "reserved on another connection");
  // The same agent on a new connection (a reconnect) takes its areas with
  // it, and the standby closes the old connection: what still comes on it
  // changes nothing.
  auto again = Connect();
  Hello(again.get());
  auto host_a = [&] {
    size_t n = 0;
    for (const auto& p : standby_->Peers()) n += p.agent == "host-a";
    return n;
  };
  ASSERT_TRUE(Pump([&] { return host_a() == 1; })) << "the old connection was not closed";
  (void)ep_->SendAm(1, hot::Encode(hot::Header{hot::Type::kCommit, 0, handle, 2, 3},
                                   hot::Body(hot::Commit{2, 1})));
  for (int i = 0; i < 20; ++i) {  // 200 ms, the new connection heard all along
    ASSERT_TRUE(again->SendAm(1, hot::Encode(hot::Header{hot::Type::kHeartbeat, 0, 0, 0, 0},
                                             hot::Body(hot::Heartbeat{1})))
                    .ok());
    Pump([&] { return false; }, 10);
  }
  EXPECT_EQ(ReplicaAt(5), 'n');
  EXPECT_EQ(ReplicaEpoch(), 2u);
  ExpectError(Ask(extra_.get(), hot::Type::kCommit, handle, 2, 3, hot::Body(hot::Commit{2, 1})),
              Code::kFailedPrecondition, "reserved on another connection");
  extra_ = std::move(again);
}

// Data messages stage an epoch exactly as puts do, and are refused, changing
// nothing, outside the area's slots, outside a full copy for a region, or
// from another connection.
TEST_P(StandbyTest, DataMessagesStageLikePutsWithinTheirBounds) {
  Hello(ep_.get());
  const uint64_t handle = Reserve(1);
  StageByData(0, 1, 1, 6, 'd');
  ASSERT_EQ(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1}))
                .header.type,
            hot::Type::kAck);
  EXPECT_EQ(ReplicaAt(6), 'd');
  const std::vector<std::byte> four(4096, std::byte{'z'});
  auto send = [&](net::Endpoint* ep, uint32_t space, uint64_t offset) {
    return AskRaw(ep, hot::EncodeData(hot::Header{hot::Type::kData, 0, handle, 1, 2}, space,
                                      offset, four));
  };
  ExpectError(send(ep_.get(), hot::kStagingSpace, 0), Code::kOutOfBounds, "outside the slots");
  ExpectError(send(ep_.get(), hot::kStagingSpace, epoch::StagingBytes(kSlots, kSlotSize) - 100),
              Code::kOutOfBounds, "outside the slots");
  ExpectError(send(ep_.get(), 1, 0), Code::kFailedPrecondition, "outside a full copy");
  extra_ = Connect();
  auto hello = Ask(extra_.get(), hot::Type::kHello, 0, 0, 1, hot::Body(hot::Hello{"host-c"}));
  ASSERT_EQ(hello.header.type, hot::Type::kWelcome);
  ExpectError(send(extra_.get(), hot::kStagingSpace, epoch::kSlotBase), Code::kFailedPrecondition,
              "reserved on another connection");
  // Nothing changed: the replica is still epoch 1, and the slot still holds
  // epoch 1 (re-committing it is answered as already applied).
  EXPECT_EQ(ReplicaAt(6), 'd');
  EXPECT_EQ(ReplicaEpoch(), 1u);
  EXPECT_GE(standby_->refused().at("OutOfBounds"), 2u);
}

// Its own owner reserving with a new geometry (a region added after the
// first Reserve) gets a new, empty area in place of the old one.
TEST_P(StandbyTest, ItsOwnerReservingWithANewGeometryReplacesTheArea) {
  const uint64_t handle = FirstEpoch();
  auto bigger = Sample();
  bigger.regions = {kRegion, kRegion};
  auto f = Ask(ep_.get(), hot::Type::kReserve, 0, 1, 3, hot::Body(bigger));
  ASSERT_EQ(f.header.type, hot::Type::kReserved) << hot::TypeName(f.header.type);
  EXPECT_NE(f.header.instance, handle);
  auto r = hot::ParseReserved(f.body);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->replica_epoch, 0u);
  ASSERT_EQ(standby_->Areas().size(), 1u);
  EXPECT_EQ(standby_->Areas()[0].region_fds.size(), 2u);
  ExpectError(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{1, 1})),
              Code::kNotFound, "no instance with handle");
}

// Heartbeats: the standby sends them on its own schedule; an agent that
// keeps talking is never suspected, a silent one is, once, after the
// timeout, and is cleared when it is heard again.
// A timeout well above any scheduling stall of this (single-threaded) test
// on a loaded machine: both sides stop when the thread does.
constexpr int kTimeoutMs = 300;
class StandbySilenceTest : public StandbyTest {
 protected:
  uint32_t TimeoutMs() const override { return kTimeoutMs; }
};

TEST_P(StandbySilenceTest, ASilentAgentIsSuspectedAndAHeardOneIsNot) {
  Hello(ep_.get());
  std::chrono::steady_clock::time_point last_sent;
  auto heartbeat = [&] {
    last_sent = std::chrono::steady_clock::now();
    ASSERT_TRUE(ep_->SendAm(1, hot::Encode(hot::Header{hot::Type::kHeartbeat, 0, 0, 0, 0},
                                           hot::Body(hot::Heartbeat{1})))
                    .ok());
  };
  // 600 ms of heartbeats every 10 ms: never suspected.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(600);
  while (std::chrono::steady_clock::now() < until) {
    heartbeat();
    Pump([&] { return false; }, 10);
  }
  ASSERT_EQ(standby_->Peers().size(), 1u);
  EXPECT_FALSE(standby_->Peers()[0].suspected);
  EXPECT_EQ(standby_->suspicions(), 0u);
  EXPECT_GE(standby_->Peers()[0].heartbeats_sent, 10u) << "the standby sends its own heartbeats";
  size_t got = 0;
  for (const auto& m : inbox_) {
    auto f = hot::Decode(m);
    if (f.ok() && f->header.type == hot::Type::kHeartbeat) ++got;
  }
  EXPECT_GE(got, 10u) << "heartbeats from the standby never arrived";
  inbox_.clear();
  // Silence: suspected after the timeout (counted from our last message,
  // which the standby heard after we sent it), and only once.
  ASSERT_TRUE(Pump([&] { return standby_->suspicions() > 0; }));
  const auto detected = std::chrono::steady_clock::now() - last_sent;
  EXPECT_GE(detected, std::chrono::milliseconds(kTimeoutMs)) << "suspected before the timeout";
  EXPECT_LT(detected, std::chrono::milliseconds(2000)) << "suspected far too late";
  EXPECT_TRUE(standby_->Peers()[0].suspected);
  Pump([&] { return false; }, 2 * kTimeoutMs);
  EXPECT_EQ(standby_->suspicions(), 1u);
  // Heard again: cleared.
  heartbeat();
  ASSERT_TRUE(Pump([&] { return !standby_->Peers()[0].suspected; }));
  inbox_.clear();
}

// An agent that reconnects leaves its old connection silent (it wedged, or
// the agent restarted): that connection is closed, never suspected.
TEST_P(StandbySilenceTest, AnAgentsOldConnectionIsNotSuspected) {
  Hello(ep_.get());
  extra_ = Connect();
  Hello(extra_.get());
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(3 * kTimeoutMs);
  while (std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(extra_->SendAm(1, hot::Encode(hot::Header{hot::Type::kHeartbeat, 0, 0, 0, 0},
                                              hot::Body(hot::Heartbeat{1})))
                    .ok());
    Pump([&] { return false; }, 10);
  }
  EXPECT_EQ(standby_->suspicions(), 0u) << "the connection the agent left was judged";
  ASSERT_EQ(standby_->Peers().size(), 1u) << "the old connection is still open";
  EXPECT_FALSE(standby_->Peers()[0].suspected);
  inbox_.clear();
}

// Failover: an owner silent past the timeout is fenced — told so, and from
// then on every request about the instance from it (and from any older
// generation) is answered with Fenced — and the replica, at its last
// acknowledged epoch, goes to the spare host's agent (here the test, on a
// unix socket as AGENT_DIR/agent.sock) as a Takeover with the replica fd and
// the record. Once the agent answers, the area is freed.
class StandbyFailoverTest : public StandbyTest {
 protected:
  uint32_t TimeoutMs() const override { return kTimeoutMs; }
  StandbyOptions Options() override {
    char tmpl[] = "/tmp/spare-standby-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto l = ipc::Listen(dir_ + "/agent.sock");
    EXPECT_TRUE(l.ok()) << l.status().ToString();
    if (l.ok()) listen_ = std::move(l).value();
    auto o = StandbyTest::Options();
    o.agent_dir = dir_;
    o.dir = dir_ + "/state";
    return o;
  }
  void TearDown() override {
    StandbyTest::TearDown();
    std::filesystem::remove_all(dir_);
  }
  void ExpectFenced(const hot::Frame& f, uint64_t now_gen) {
    ASSERT_EQ(f.header.type, hot::Type::kFenced) << hot::TypeName(f.header.type);
    auto m = hot::ParseFenced(f.body);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->generation, now_gen);
    EXPECT_NE(m->reason.find("failed over"), std::string::npos) << m->reason;
  }
  std::string dir_;
  UniqueFd listen_;
};

TEST_P(StandbyFailoverTest, ASilentOwnerIsFencedAndItsReplicaHandedOver) {
  const uint64_t handle = FirstEpoch();
  Stage(1, 1, 2, 3, 'b');
  ASSERT_EQ(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 2, hot::Body(hot::Commit{1, 1}))
                .header.type,
            hot::Type::kAck);
  // Staged but never committed: not in what is handed over.
  Stage(2, 1, 3, 3, 'c');

  // Silence: fenced after the timeout, the Takeover arrives.
  ASSERT_TRUE(Pump([&] { return !standby_->failovers().empty(); }));
  ExpectFenced(Answer(), 2);
  UniqueFd conn(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid());
  auto got = ipc::Receive(conn.get());
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  ipc::Message& m = **got;
  EXPECT_EQ(m.type, ipc::MsgType::kTakeover);
  EXPECT_EQ(m.body["id"], "kv1");
  EXPECT_EQ(m.body["epoch"], 2);
  EXPECT_EQ(m.body["generation"], 2);
  EXPECT_EQ(m.body["from"], "host-a");
  EXPECT_EQ(m.body["spec"]["argv"][0], "spare-kv");
  EXPECT_GE(m.body["detection_ms"].get<double>(), kTimeoutMs);
  EXPECT_EQ(m.body["detected_by"], "silence");
  EXPECT_EQ(m.blob, "rec-2");
  ASSERT_EQ(m.fds.size(), 1u);
  char c = 0;
  ASSERT_EQ(::pread(m.fds[0].get(), &c, 1, 3 * 4096), 1);
  EXPECT_EQ(c, 'b') << "the replica handed over is the last acknowledged epoch";
  ASSERT_FALSE(standby_->failovers()[0].done);
  ASSERT_TRUE(ipc::Send(conn.get(), ipc::OkMessage({{"id", "kv1"}})).ok());
  ASSERT_TRUE(Pump([&] { return standby_->failovers()[0].done; }));
  EXPECT_EQ(standby_->failovers()[0].result, "ok");
  EXPECT_TRUE(standby_->Areas().empty()) << "the agent holds the replica now";

  // The old owner is fenced: its Commit, and its Reserve at any generation.
  ExpectFenced(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 3, hot::Body(hot::Commit{2, 1})), 2);
  ExpectFenced(Ask(ep_.get(), hot::Type::kReserve, 0, 9, 5, hot::Body(Sample())), 2);
  // Another agent below the replacement's generation too; above it, it
  // protects the id afresh.
  extra_ = Connect();
  auto hello = Ask(extra_.get(), hot::Type::kHello, 0, 0, 1, hot::Body(hot::Hello{"host-b"}));
  ASSERT_EQ(hello.header.type, hot::Type::kWelcome);
  ExpectFenced(Ask(extra_.get(), hot::Type::kReserve, 0, 1, 2, hot::Body(Sample())), 2);
  auto fresh = Ask(extra_.get(), hot::Type::kReserve, 0, 3, 3, hot::Body(Sample()));
  ASSERT_EQ(fresh.header.type, hot::Type::kReserved) << hot::TypeName(fresh.header.type);
  auto r = hot::ParseReserved(fresh.body);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->replica_epoch, 0u);
  EXPECT_GE(standby_->refused().at("Fenced"), 4u);
}

// The fence is on disk (DIR/standby.json): a restarted standby still
// refuses the owner it fenced; a state file it cannot read stops it, named.
TEST_P(StandbyFailoverTest, AFenceSurvivesARestart) {
  FirstEpoch();
  ASSERT_TRUE(Pump([&] { return !standby_->failovers().empty(); }));
  ExpectFenced(Answer(), 2);
  key_.reset();
  ep_.reset();
  Pump([&] { return agent_->closing() == 0; });
  standby_.reset();
  auto o = StandbyTest::Options();
  o.agent_dir = dir_;
  o.dir = dir_ + "/state";
  auto s = Standby::Create(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  standby_ = std::move(s).value();
  ep_ = Connect();
  Hello(ep_.get());
  ExpectFenced(Ask(ep_.get(), hot::Type::kReserve, 0, 1, 2, hot::Body(Sample())), 2);
  ExpectFenced(Ask(ep_.get(), hot::Type::kReserve, 0, 9, 3, hot::Body(Sample())), 2);
  EXPECT_TRUE(standby_->Areas().empty());
  // Unreadable state: refused by name, nothing started.
  for (const auto& [text, needle] :
       std::vector<std::pair<std::string, std::string>>{
           {R"({"version": 2, "tombstones": []})", "version 2; this standby reads version 1"},
           {"not json", "not a JSON object"},
           {R"({"version": 1, "tombstones": [{"id": "", "generation": 1, "owner": "a"}]})",
            "tombstones[0] needs a non-empty string id"}}) {
    const std::string other = dir_ + "/bad";
    std::filesystem::create_directories(other);
    FILE* f = std::fopen((other + "/standby.json").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
    auto bad = StandbyTest::Options();
    bad.dir = other;
    auto r = Standby::Create(bad);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), Code::kBadMessage);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
  }
}

TEST_P(StandbyFailoverTest, WithoutAnAgentTheOwnerIsStillFenced) {
  listen_.reset();  // nobody answers on AGENT_DIR/agent.sock
  Hello(ep_.get());
  const uint64_t handle = Reserve(1);
  ASSERT_TRUE(Pump([&] { return !standby_->failovers().empty(); }));
  ExpectFenced(Answer(), 2);
  EXPECT_TRUE(standby_->failovers()[0].done);
  EXPECT_NE(standby_->failovers()[0].result.find("agent"), std::string::npos)
      << standby_->failovers()[0].result;
  ASSERT_EQ(standby_->Areas().size(), 1u) << "the replica is kept when nobody took it";
  Stage(0, 1, 1, 3, 'a');
  ExpectFenced(Ask(ep_.get(), hot::Type::kCommit, handle, 1, 1, hot::Body(hot::Commit{0, 1})), 2);
  EXPECT_EQ(ReplicaAt(3), 0);
}

// The liveness channel (hot/live.h) beside the UCX connection: the owner's
// process dying closes it, and its instances fail over at once — long
// before the timeout (5 s here) — detected_by "close". A Leaving on it
// first makes the close harmless; a death noted before the agent's next
// Hello was an earlier process's, and its new area is not failed over.
class StandbyLivenessTest : public StandbyFailoverTest {
 protected:
  uint32_t TimeoutMs() const override { return 5000; }
  std::unique_ptr<hot::LiveClient> Live() {
    auto c = hot::LiveClient::Create("host-a", std::chrono::milliseconds(1000), nullptr);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (!c.ok()) return nullptr;
    (*c)->Target("127.0.0.1", standby_->live_port(), 10);
    return std::move(c).value();
  }
  bool LiveUp() {
    for (const auto& p : standby_->Peers())
      if (p.agent == "host-a" && p.live && p.live_beats >= 2) return true;
    return false;
  }
};

TEST_P(StandbyLivenessTest, AClosedLivenessConnectionFailsTheOwnerOverAtOnce) {
  FirstEpoch();
  auto live = Live();
  ASSERT_TRUE(Pump([&] { return LiveUp(); }, 2000));
  const auto closed = std::chrono::steady_clock::now();
  live.reset();  // as the kernel does when the agent process dies
  ASSERT_TRUE(Pump([&] { return !standby_->failovers().empty(); }, 2000));
  const auto took = std::chrono::steady_clock::now() - closed;
  EXPECT_LT(took, std::chrono::milliseconds(1000)) << "waited for the timeout";
  EXPECT_EQ(standby_->failovers()[0].detected_by, "close");
  EXPECT_LT(standby_->failovers()[0].detection_ms, 1000);
  ExpectFenced(Answer(), 2);
}

TEST_P(StandbyLivenessTest, LeavingThenCloseIsNoFailover) {
  FirstEpoch();
  auto live = Live();
  ASSERT_TRUE(Pump([&] { return LiveUp(); }, 2000));
  std::atomic<bool> left{false};
  std::thread t([&] { left = live->Leave(10000, std::chrono::milliseconds(1000)); });
  Pump([&] { return left.load(); }, 1500);
  t.join();
  ASSERT_TRUE(left);
  Pump([&] { return false; }, 100);  // the Leaving read before the close
  live.reset();
  Pump([&] { return !standby_->failovers().empty(); }, 500);
  EXPECT_TRUE(standby_->failovers().empty()) << "a graceful stop was taken for a death";
}

TEST_P(StandbyLivenessTest, ADeathBeforeTheAgentsNextHelloIsNotItsNewAreas) {
  auto live = Live();  // "host-a", before any UCX Hello: an earlier process
  ASSERT_TRUE(Pump([&] {
    for (const auto& p : standby_->Peers()) (void)p;
    return live->connected();
  }, 2000));
  Pump([&] { return false; }, 50);
  live.reset();
  Pump([&] { return false; }, 100);  // its death is noted
  FirstEpoch();                       // the next process: Hello, Reserve, epoch 1
  Pump([&] { return !standby_->failovers().empty(); }, 500);
  EXPECT_TRUE(standby_->failovers().empty()) << "an earlier process's death failed over a new area";
}

std::string TransportName(const ::testing::TestParamInfo<const char*>& info) {
  std::string name = info.param;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}
INSTANTIATE_TEST_SUITE_P(Transports, StandbyTest, ::testing::Values("tcp", "shm,tcp"),
                         TransportName);
INSTANTIATE_TEST_SUITE_P(Transports, StandbySilenceTest, ::testing::Values("tcp", "shm,tcp"),
                         TransportName);
INSTANTIATE_TEST_SUITE_P(Transports, StandbyFailoverTest, ::testing::Values("tcp", "shm,tcp"),
                         TransportName);
INSTANTIATE_TEST_SUITE_P(Transports, StandbyLivenessTest, ::testing::Values("tcp", "shm,tcp"),
                         TransportName);

}  // namespace
}  // namespace spare::standby
