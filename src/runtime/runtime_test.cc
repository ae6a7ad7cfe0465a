// The instance side of the protocol against a small in-process agent that
// speaks the real wire format over a real unix socket and applies epochs
// with the real ApplyEpoch. Its knobs (hold answers, hold Durable, drop the connection)
// are the fault-injection seam; end-to-end tests with the real agent
// process live in tests/.
#include "spare/runtime.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include "epoch/staging.h"
#include "ipc/body.h"
#include "ipc/wire.h"
#include "region/mapping.h"
#include "runtime/runtime_impl.h"

namespace spare {
namespace {

constexpr uint64_t kPage = 4096;

class FakeAgent {
 public:
  FakeAgent(uint32_t slots, uint64_t slot_size, uint64_t resume_epoch = 0,
            std::string resume_record = "")
      : epoch_(resume_epoch), record_(std::move(resume_record)) {
    dir_ = std::filesystem::temp_directory_path() /
           ("spare-rt-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(dir_);
    listen_ = std::move(*ipc::Listen(dir_ + "/agent.sock"));
    size_t bytes = epoch::StagingBytes(slots, slot_size);
    staging_fd_ = std::move(*region::CreateMemfd("staging", bytes));
    void* base = *region::MapShared(staging_fd_.get(), bytes, true);
    view_ = epoch::StagingView{static_cast<std::byte*>(base), bytes, slots, slot_size};
    epoch::InitStaging(view_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeAgent() {
    stop_ = true;
    thread_.join();
    std::filesystem::remove_all(dir_);
  }
  const std::string& dir() const { return dir_; }
  void Hold(bool hold) { hold_ = hold; }
  // Applies and releases slots at once, but sends Durable only when told
  // (a standby that acknowledges late).
  void HoldDurable(bool hold) {
    hold_durable_ = hold;
    if (!hold) send_durable_ = true;
  }
  void DropConnection() { drop_ = true; }
  uint64_t epoch() const { return epoch_; }
  int attaches() const { return attaches_; }
  size_t reattach_fds() const { return reattach_fds_; }
  void RefuseCommits() { refuse_ = true; }
  // Committed image of region 0.
  std::string Image(size_t len) {
    std::lock_guard<std::mutex> l(mu_);
    std::string s(len, '\0');
    EXPECT_EQ(pread(regions_[0].fd, s.data(), len, 0), static_cast<ssize_t>(len));
    return s;
  }

 private:
  void Loop() {
    UniqueFd conn;
    std::deque<ipc::Message> held;
    while (!stop_) {
      if (drop_.exchange(false)) conn.reset();
      if (!conn.valid()) {
        int c = accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) conn.reset(c);
        if (!conn.valid()) {
          usleep(1000);
          continue;
        }
      }
      if (send_durable_.exchange(false))
        Reply(conn.get(), Progress(ipc::MsgType::kDurable, epoch_));
      while (!hold_ && !held.empty()) {
        Commit(conn.get(), held.front());
        held.pop_front();
      }
      pollfd p{conn.get(), POLLIN, 0};
      if (::poll(&p, 1, 5) <= 0) continue;
      auto r = ipc::Receive(conn.get(), true);
      if (!r.ok()) {
        conn.reset();
        continue;
      }
      if (!r->has_value()) continue;
      ipc::Message m = std::move(**r);
      if (m.type == ipc::MsgType::kCommit && hold_) {
        held.push_back(std::move(m));
      } else {
        Handle(conn.get(), std::move(m));
      }
    }
  }
  void Handle(int conn, ipc::Message m) {
    ipc::Message out;
    out.type = ipc::MsgType::kOk;
    if (m.type == ipc::MsgType::kAttach) {
      ++attaches_;
      auto re = ipc::Body(m.body, "Attach").Bool("reattach", false);
      ASSERT_TRUE(re.ok()) << re.status().ToString();
      if (*re) {
        reattach_fds_ = m.fds.size();
      } else {
        out.body = {{"id", "t"},
                    {"generation", 1},
                    {"resumed", epoch_.load() > 0},
                    {"epoch", epoch_.load()},
                    {"slot_count", view_.slot_count},
                    {"slot_size", view_.slot_size},
                    {"regions", nlohmann::json::array()}};
        out.blob = record_;
        out.fds.emplace_back(dup(staging_fd_.get()));
      }
    } else if (m.type == ipc::MsgType::kRegion) {
      auto size_field = ipc::Body(m.body, "Region").Uint("size");
      ASSERT_TRUE(size_field.ok()) << size_field.status().ToString();
      uint64_t size = *size_field;
      auto fd = region::CreateMemfd("r", size);
      std::lock_guard<std::mutex> l(mu_);
      uint64_t address = region::DeriveAddress("rt-test", "heap", size);
      out.body = {{"name", m.body["name"]},
                  {"index", regions_.size()},
                  {"address", address},
                  {"size", size},
                  {"existed", false}};
      memfds_.emplace_back(dup(fd->get()));
      regions_.push_back({memfds_.back().get(), size});
      out.fds.push_back(std::move(*fd));
    } else if (m.type == ipc::MsgType::kCommit) {
      return Commit(conn, m);
    }
    Reply(conn, out);
  }
  // The runtime may be gone already when a test ends; that is not an error.
  static void Reply(int conn, const ipc::Message& out) {
    Status st = ipc::Send(conn, out);
    ASSERT_TRUE(st.ok() || st.code() == Code::kUnavailable) << st.ToString();
  }
  void Commit(int conn, const ipc::Message& m) {
    ipc::Body b(m.body, "Commit");
    auto e_field = b.Uint("epoch");
    auto first_field = b.Uint("first_slot");
    auto parts_field = b.Uint("parts");
    for (const Status& st : {e_field.status(), first_field.status(), parts_field.status()})
      ASSERT_TRUE(st.ok()) << st.ToString();
    uint64_t e = *e_field, first = *first_field, parts = *parts_field;
    Status st = refuse_ ? Status(Code::kStaleGeneration, "refused by test") : Status::Ok();
    if (st.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      st = epoch::ApplyEpoch(view_, m.generation, e, static_cast<uint32_t>(first),
                             static_cast<uint32_t>(parts), regions_, &record_);
    }
    if (!st.ok()) {
      ipc::Message out = ipc::ErrorMessage(st);
      out.body["epoch"] = e;
      return Reply(conn, out);
    }
    epoch_ = e;
    Reply(conn, Progress(ipc::MsgType::kReleased, e));
    if (!hold_durable_) Reply(conn, Progress(ipc::MsgType::kDurable, e));
  }
  static ipc::Message Progress(ipc::MsgType type, uint64_t e) {
    ipc::Message out;
    out.type = type;
    out.body = {{"epoch", e}};
    return out;
  }

  static inline std::atomic<int> counter_{0};
  std::string dir_;
  UniqueFd listen_, staging_fd_;
  epoch::StagingView view_;
  std::mutex mu_;
  std::vector<epoch::RegionTarget> regions_;
  std::vector<UniqueFd> memfds_;
  std::atomic<uint64_t> epoch_;
  std::string record_;
  std::atomic<bool> stop_{false}, hold_{false}, drop_{false}, refuse_{false};
  std::atomic<bool> hold_durable_{false}, send_durable_{false};
  std::atomic<int> attaches_{0};
  std::atomic<size_t> reattach_fds_{0};
  std::thread thread_;
};

class RuntimeTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    setenv("SPARE_TRACKER", GetParam(), 1);
    // Pacing merges commits by timing; the tests of pacing turn it on.
    setenv("SPARE_PACE_SHARE", "0", 1);
  }
  Runtime Attach(const FakeAgent& a) {
    setenv("SPARE_AGENT", a.dir().c_str(), 1);
    setenv("SPARE_INSTANCE", "t", 1);
    auto rt = Runtime::Attach();
    EXPECT_TRUE(rt.ok()) << rt.status().ToString();
    return std::move(rt).value();
  }
};

std::string View(Region* r, size_t len) { return std::string(static_cast<char*>(r->data()), len); }

TEST_P(RuntimeTest, DurableEpochImageEqualsRegion) {
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  EXPECT_FALSE(rt.resumed());
  Region* r = *rt.region("heap", 64 * kPage);
  EXPECT_EQ(rt.stats().tracker, GetParam() == std::string("uffd") ? "uffd-wp" : "mprotect");
  for (int round = 0; round < 20; ++round) {
    for (int p = round % 7; p < 64; p += 5) r->bytes()[p * kPage + round] = std::byte(round + 1);
    auto e = rt.commit("r" + std::to_string(round));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    Status w = rt.wait_durable(*e, 5000);
    ASSERT_TRUE(w.ok()) << w.ToString();
    ASSERT_EQ(agent.Image(64 * kPage), View(r, 64 * kPage)) << "round " << round;
  }
  EXPECT_EQ(agent.epoch(), 20u);
}

TEST_P(RuntimeTest, GateReleasesOnlyAfterApplied) {
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 16 * kPage);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd app(sv[0]), client(sv[1]);
  agent.Hold(true);
  r->bytes()[0] = std::byte{1};
  ASSERT_TRUE(rt.gate().send(app.get(), "+OK\r\n").ok());
  auto e = rt.commit();
  ASSERT_TRUE(e.ok());
  usleep(20000);
  ASSERT_TRUE(rt.poll().ok());
  char buf[16];
  EXPECT_EQ(read(client.get(), buf, sizeof buf), -1);  // still held
  agent.Hold(false);
  {
    Status w = rt.wait_durable(*e, 5000);
    ASSERT_TRUE(w.ok()) << w.ToString();
  }
  EXPECT_EQ(read(client.get(), buf, sizeof buf), 5);
}

// Released frees slots; only Durable lets outputs leave (issue 6 item 2).
// With 2 slots and Durable withheld, ten commits still ship one by one
// (none deferred), while every reply stays held until Durable comes.
TEST_P(RuntimeTest, ReleasedFreesSlotsButOnlyDurableReleasesOutputs) {
  FakeAgent agent(2, epoch::kMinSlotSize);
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 16 * kPage);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd app(sv[0]), client(sv[1]);
  agent.HoldDurable(true);
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) {
    r->bytes()[(i % 16) * kPage] = std::byte(i + 1);
    ASSERT_TRUE(rt.gate().send(app.get(), "+OK\r\n").ok());
    auto e = rt.commit();
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    last = *e;
    // Wait for the slots to come back before the next commit.
    for (int t = 0; t < 500 && rt.stats().released_epoch < last; ++t) {
      usleep(1000);
      ASSERT_TRUE(rt.poll().ok());
    }
    ASSERT_EQ(rt.stats().released_epoch, last);
  }
  EXPECT_EQ(rt.stats().deferred_commits, 0u);
  EXPECT_EQ(rt.stats().backpressure_waits, 0u);
  EXPECT_EQ(rt.durable_epoch(), 0u);
  EXPECT_EQ(rt.stats().durables, 0u);
  char buf[64];
  EXPECT_EQ(read(client.get(), buf, sizeof buf), -1);  // every reply still held
  agent.HoldDurable(false);
  ASSERT_TRUE(rt.wait_durable(last, 5000).ok());
  EXPECT_EQ(rt.stats().durable_epoch, last);
  EXPECT_EQ(read(client.get(), buf, sizeof buf), 50);  // all ten at once
}

// A commit that must block for a slot gives up after $SPARE_COMMIT_WAIT_MS
// with kUnavailable instead of hanging, and loses nothing: once the agent
// answers again the next commit ships the pages.
TEST_P(RuntimeTest, BlockedCommitHasADeadline) {
  FakeAgent agent(2, epoch::kMinSlotSize);
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 32 * kPage);
  agent.Hold(true);
  setenv("SPARE_COMMIT_WAIT_MS", "200", 1);
  Status blocked = Status::Ok();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 300 && blocked.ok(); ++i) {  // 2 in flight, 256 deferred, then blocks
    r->bytes()[(i % 32) * kPage] = std::byte(i + 1);
    blocked = rt.commit().status();
  }
  unsetenv("SPARE_COMMIT_WAIT_MS");
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_EQ(blocked.code(), Code::kUnavailable) << blocked.ToString();
  EXPECT_NE(blocked.message().find("free staging slot"), std::string::npos);
  EXPECT_LT(ms, 5000);
  agent.Hold(false);
  ASSERT_TRUE(rt.wait_durable(rt.epoch(), 5000).ok());
  auto e = rt.commit();  // not sticky: ships everything collected
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  EXPECT_EQ(agent.Image(32 * kPage), View(r, 32 * kPage));
}

// Regression (found by bench/run_all.sh's commit bench once applies moved to
// the agent's worker): while the agent lags, each commit writing new pages
// grew the merged epoch until it was larger than the whole ring — a sticky
// kResourceExhausted. Now a commit waits for slots once the merged epoch
// needs half the ring, so the epoch stays shippable and nothing is lost.
TEST_P(RuntimeTest, LaggingAgentNeverMakesTheMergedEpochTooLarge) {
  FakeAgent agent(4, epoch::kMinSlotSize);  // 4 x 128 KiB
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 256 * kPage);
  agent.Hold(true);  // an agent that answers 300 ms late
  std::thread late([&] {
    usleep(300'000);
    agent.Hold(false);
  });
  for (int i = 0; i < 12; ++i) {  // 16 new pages (64 KiB) per commit: 768 KiB in all
    for (int p = 0; p < 16; ++p) r->bytes()[((i * 16 + p) % 256) * kPage] = std::byte(i + 1);
    auto e = rt.commit();
    EXPECT_TRUE(e.ok()) << "commit " << i << ": " << e.status().ToString();
    if (!e.ok()) break;
  }
  late.join();
  EXPECT_GT(rt.stats().backpressure_waits, 0u);
  ASSERT_TRUE(rt.wait_durable(rt.epoch(), 5000).ok());
  auto e = rt.commit();
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  EXPECT_EQ(agent.Image(256 * kPage), View(r, 256 * kPage));
}

TEST_P(RuntimeTest, BusyStagingDefersAndMergesWithoutLosingPages) {
  FakeAgent agent(2, epoch::kMinSlotSize);
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 32 * kPage);
  agent.Hold(true);
  for (int i = 0; i < 10; ++i) {  // 2 slots: the rest must defer, not block
    r->bytes()[(i % 32) * kPage] = std::byte(i + 1);
    ASSERT_TRUE(rt.commit().ok());
  }
  EXPECT_GE(rt.stats().deferred_commits, 8u);
  agent.Hold(false);
  r->bytes()[31 * kPage] = std::byte{99};
  ASSERT_TRUE(rt.wait_durable(rt.epoch(), 5000).ok());
  auto e = rt.commit();  // ships the merged epoch
  ASSERT_TRUE(e.ok());
  {
    Status w = rt.wait_durable(*e, 5000);
    ASSERT_TRUE(w.ok()) << w.ToString();
  }
  EXPECT_EQ(agent.Image(32 * kPage), View(r, 32 * kPage));
}

TEST_P(RuntimeTest, ReattachesAfterAgentConnectionDrops) {
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  Region* r = *rt.region("heap", 8 * kPage);
  r->bytes()[0] = std::byte{7};
  ASSERT_TRUE(rt.wait_durable(*rt.commit(), 5000).ok());
  agent.DropConnection();
  usleep(30000);
  r->bytes()[kPage] = std::byte{8};
  auto e = rt.commit();
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok()) << "no reattach";
  EXPECT_EQ(agent.attaches(), 2);
  EXPECT_EQ(agent.reattach_fds(), 2u);  // staging + one region
  EXPECT_EQ(agent.Image(8 * kPage), View(r, 8 * kPage));
}

TEST_P(RuntimeTest, ResumeReportsRecordAndEpoch) {
  FakeAgent agent(4, 1 << 20, 41, "resume-here");
  Runtime rt = Attach(agent);
  EXPECT_TRUE(rt.resumed());
  EXPECT_EQ(rt.epoch(), 41u);
  EXPECT_EQ(rt.durable_epoch(), 41u);
  auto rec = rt.record();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(rec.data()), rec.size()), "resume-here");
  (void)*rt.region("heap", 4 * kPage);
  auto e = rt.commit();
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e, 42u);
}

TEST_P(RuntimeTest, RefusedEpochIsSticky) {
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  (void)*rt.region("heap", 4 * kPage);
  agent.RefuseCommits();
  auto e = rt.commit();
  ASSERT_TRUE(e.ok());
  Status st = rt.wait_durable(*e, 5000);
  EXPECT_EQ(st.code(), Code::kStaleGeneration) << st.ToString();
  EXPECT_EQ(rt.commit().status().code(), Code::kStaleGeneration);
  EXPECT_EQ(rt.poll().code(), Code::kStaleGeneration);
}

TEST_P(RuntimeTest, RecordTooLargeIsRefused) {
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  std::string big(epoch::kMaxRecord + 1, 'r');
  EXPECT_EQ(rt.commit(big).status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(rt.commit("ok").ok());  // not sticky: nothing was changed
}

// An epoch above the parallel-copy threshold, spanning several slots, with
// the copy helper allowed and not: the image equals the region either way.
TEST_P(RuntimeTest, LargeEpochImageEqualsRegionWithAndWithoutHelper) {
  for (const char* threads : {"1", "0"}) {
    setenv("SPARE_COPY_THREADS", threads, 1);
    FakeAgent agent(8, 1 << 20);
    Runtime rt = Attach(agent);
    unsetenv("SPARE_COPY_THREADS");
    EXPECT_EQ(rt.stats().copy_helpers, threads[0] == '1' ? 1u : 0u);
    Region* r = *rt.region("heap", 1024 * kPage);
    for (int round = 0; round < 4; ++round) {
      for (uint64_t p = round; p < 1024; p += (round % 2 ? 2 : 1))
        std::memset(r->bytes() + p * kPage, 'a' + round + static_cast<int>(p % 7), kPage);
      auto e = rt.commit("big" + std::to_string(round));
      ASSERT_TRUE(e.ok()) << e.status().ToString();
      Status w = rt.wait_durable(*e, 5000);
      ASSERT_TRUE(w.ok()) << w.ToString();
      ASSERT_EQ(agent.Image(1024 * kPage), View(r, 1024 * kPage))
          << "threads " << threads << " round " << round;
    }
    if (threads[0] == '0') {
      EXPECT_EQ(rt.stats().bytes_copied_by_helpers, 0u);
    }
    EXPECT_LE(rt.stats().bytes_copied_by_helpers, rt.stats().bytes_committed);
  }
}

// /proc/self/pagemap says whether the page at p maps the memfd's page
// (bit 61: file page) rather than a private copy.
bool MapsImagePage(const void* p) {
  UniqueFd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  uint64_t e = 0;
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(p) / kPage * 8);
  if (!pm.valid() || ::pread(pm.get(), &e, 8, at) != 8) return false;
  return (e >> 63 & 1) && (e >> 61 & 1);
}

// DESIGN §2: private copies of pages that stayed clean for a while are
// dropped; the page reads the same bytes from the image and its next write
// is still tracked. A page kept hot is never dropped.
TEST_P(RuntimeTest, DropsPrivateCopiesOfLongCleanPages) {
  setenv("SPARE_DROP_CLEAN_MS", "20", 1);
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_DROP_CLEAN_MS");
  Region* r = *rt.region("heap", 64 * kPage);
  for (int p = 0; p < 32; ++p) std::memset(r->bytes() + p * kPage, 'A' + p % 26, kPage);
  auto e = rt.commit("cold");
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_FALSE(MapsImagePage(r->bytes())) << "a written page is a private copy";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int round = 0; rt.stats().pages_dropped < 32; ++round) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "dropped " << rt.stats().pages_dropped << " of 32 pages";
    r->bytes()[40 * kPage] = std::byte(round & 0xff);  // page 40 stays hot
    auto h = rt.commit("hot");
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    Status w = rt.wait_durable(*h, 5000);
    ASSERT_TRUE(w.ok()) << w.ToString();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(rt.stats().pages_dropped, 32u) << "only the cold pages";
  EXPECT_EQ(rt.stats().drop_errors, 0u);
  for (int p = 0; p < 32; ++p) {
    ASSERT_EQ(static_cast<char>(r->bytes()[p * kPage + 7]), 'A' + p % 26) << "page " << p;
    EXPECT_TRUE(MapsImagePage(r->bytes() + p * kPage)) << "page " << p;
  }
  EXPECT_FALSE(MapsImagePage(r->bytes() + 40 * kPage)) << "the hot page keeps its copy";
  // A dropped page's next write is tracked and reaches the image.
  r->bytes()[3 * kPage + 1] = std::byte{'z'};
  auto z = rt.commit("after");
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*z, 5000).ok());
  EXPECT_EQ(agent.Image(64 * kPage), View(r, 64 * kPage));
}

// KiB of private (anonymous) pages in the mappings inside [p, p + len),
// summed over /proc/self/smaps (the mprotect tracker splits a region into
// several mappings). ~0 on error, which fails any "below" check.
uint64_t AnonKib(const void* p, size_t len) {
  const auto lo = reinterpret_cast<uintptr_t>(p), hi = lo + len;
  std::FILE* f = std::fopen("/proc/self/smaps", "re");
  if (!f) return ~uint64_t{0};
  uint64_t kib = 0;
  bool inside = false;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long start = 0, end = 0, v = 0;
    if (std::sscanf(line, "%lx-%lx ", &start, &end) == 2) {  // a mapping's first line
      inside = start >= lo && end <= hi;
    } else if (inside && std::sscanf(line, "Anonymous: %lu kB", &v) == 1) {
      kib += v;
    }
  }
  std::fclose(f);
  return kib;
}

// An idle event loop: waits for rt.fd() and calls only poll() — no commit —
// until done() or `limit` passes. False on timeout or a poll() error.
template <class Done>
bool PollIdleUntil(Runtime& rt, Done done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (int i = 0; i < 100'000 && !done(); ++i) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return false;
    pollfd p{rt.fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 50))) > 0) {
      Status st = rt.poll();
      EXPECT_TRUE(st.ok()) << st.ToString();
      if (!st.ok()) return false;
    }
  }
  return done();
}

// Issue 7 item 5: a program that goes idle after a large write does not keep
// the private copies of what it wrote. Only poll(), called when fd() is
// readable, drops them — more than one budget's worth, so the timer must
// re-arm while more is due — and once nothing is due fd() stays quiet.
TEST_P(RuntimeTest, IdlePollDropsPrivateCopies) {
  setenv("SPARE_DROP_CLEAN_MS", "20", 1);
  FakeAgent agent(4, 8 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_DROP_CLEAN_MS");
  constexpr uint64_t kPages = 6144;  // 24 MiB: more than one idle pass drops
  const size_t len = kPages * kPage;
  Region* r = *rt.region("heap", len);
  for (uint64_t p = 0; p < kPages; ++p) std::memset(r->bytes() + p * kPage, 'a' + p % 26, kPage);
  auto e = rt.commit("fill");
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  ASSERT_TRUE(rt.poll().ok());
  const uint64_t commits = rt.stats().commits;
  const uint64_t anon_filled = AnonKib(r->data(), len);
  EXPECT_GE(anon_filled, len / 1024 * 9 / 10) << "the fill made private copies";
  ASSERT_TRUE(PollIdleUntil(
      rt, [&] { return rt.stats().pages_dropped >= kPages; }, std::chrono::seconds(10)))
      << "dropped " << rt.stats().pages_dropped << " of " << kPages << " pages while idle";
  const RuntimeStats st = rt.stats();
  EXPECT_EQ(st.pages_dropped, kPages);
  EXPECT_EQ(st.pages_dropped_idle, kPages);
  EXPECT_GE(st.idle_drop_passes, 2u) << "24 MiB is more than one idle budget";
  EXPECT_EQ(st.commits, commits) << "no commit did it";
  EXPECT_EQ(st.drop_errors, 0u);
  EXPECT_LT(AnonKib(r->data(), len), 64u) << "was " << anon_filled << " KiB after the fill";
  for (uint64_t p = 0; p < kPages; p += 97) {
    ASSERT_EQ(static_cast<char>(r->bytes()[p * kPage + 9]), 'a' + p % 26) << "page " << p;
    EXPECT_TRUE(MapsImagePage(r->bytes() + p * kPage)) << "page " << p;
  }
  // Nothing tracked any more: the timer is off, an idle loop sleeps.
  pollfd quiet{rt.fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&quiet, 1, 100), 0) << "fd() readable with nothing to drop";
  // A dropped page's next write is tracked and reaches the image.
  r->bytes()[5 * kPage + 1] = std::byte{'z'};
  auto z = rt.commit("after");
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*z, 5000).ok());
  EXPECT_EQ(agent.Image(64 * kPage), View(r, 64 * kPage));
}

// The hazard of dropping outside commit(): a page written after the last
// commit, not collected yet, whose older copy is long clean and durable.
// Dropping it would bring back the image's older bytes and lose the write;
// poll() must collect first, keep it, and the next commit must ship it.
TEST_P(RuntimeTest, IdlePollKeepsPagesWrittenSinceTheLastCommit) {
  setenv("SPARE_DROP_CLEAN_MS", "20", 1);
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_DROP_CLEAN_MS");
  constexpr int kPages = 64;
  Region* r = *rt.region("heap", kPages * kPage);
  std::memset(r->bytes(), 'A', kPages * kPage);
  auto e = rt.commit("all A");
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  ASSERT_TRUE(rt.poll().ok());  // arms the drop timer
  // Five intervals with no poll: every page is clean and durable long
  // enough to drop. Then the even pages are written, without a commit.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (int p = 0; p < kPages; p += 2) std::memset(r->bytes() + p * kPage, 'Z', kPage);
  ASSERT_TRUE(PollIdleUntil(
      rt, [&] { return rt.stats().pages_dropped >= kPages / 2; }, std::chrono::seconds(5)))
      << "dropped " << rt.stats().pages_dropped;
  // More idle intervals: the written pages' epoch is not even shipped.
  (void)PollIdleUntil(
      rt, [] { return false; }, std::chrono::milliseconds(150));
  EXPECT_EQ(rt.stats().pages_dropped, uint64_t{kPages / 2}) << "only the odd pages";
  for (int p = 0; p < kPages; ++p) {
    const char want = p % 2 ? 'A' : 'Z';
    ASSERT_EQ(static_cast<char>(r->bytes()[p * kPage + 100]), want) << "page " << p;
    EXPECT_EQ(MapsImagePage(r->bytes() + p * kPage), p % 2 == 1) << "page " << p;
  }
  auto z = rt.commit("even Z");
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*z, 5000).ok());
  const std::string image = agent.Image(kPages * kPage);
  EXPECT_EQ(image, View(r, kPages * kPage));
  EXPECT_EQ(image[0], 'Z');
  EXPECT_EQ(image[(kPages - 2) * kPage + kPage - 1], 'Z');
}

// $SPARE_DROP_CLEAN_MS=0 still means never: no timer wakes an idle loop,
// every private copy stays.
TEST_P(RuntimeTest, IdlePollNeverDropsWhenDroppingIsOff) {
  setenv("SPARE_DROP_CLEAN_MS", "0", 1);
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_DROP_CLEAN_MS");
  Region* r = *rt.region("heap", 64 * kPage);
  std::memset(r->bytes(), 'A', 64 * kPage);
  auto e = rt.commit();
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  ASSERT_TRUE(rt.poll().ok());
  pollfd p{rt.fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 200), 0) << "ten intervals of 20 ms would have passed";
  ASSERT_TRUE(rt.poll().ok());
  EXPECT_EQ(rt.stats().pages_dropped, 0u);
  EXPECT_GE(AnonKib(r->data(), 64 * kPage), 64 * kPage / 1024 * 9 / 10);
}

TEST(RuntimeAttach, BadDropCleanMsIsRefused) {
  FakeAgent agent(4, 1 << 20);
  setenv("SPARE_AGENT", agent.dir().c_str(), 1);
  setenv("SPARE_INSTANCE", "t", 1);
  setenv("SPARE_DROP_CLEAN_MS", "soon", 1);
  auto rt = Runtime::Attach();
  unsetenv("SPARE_DROP_CLEAN_MS");
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().code(), Code::kInvalidArgument);
  EXPECT_NE(rt.status().message().find("SPARE_DROP_CLEAN_MS"), std::string::npos);
}

// Declared writes (issue 7 item 3): the epoch carries exactly the declared
// byte ranges, sub-page, and the image matches the region; the page tracker
// is not involved (the region is never scanned or protected).
TEST_P(RuntimeTest, DeclaredRegionShipsExactlyTheDeclaredBytes) {
  unsetenv("SPARE_VERIFY_WRITES");
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  RegionOptions o;
  o.writes = WriteTracking::kDeclared;
  Region* r = *rt.region("heap", 64 * kPage, o);
  ASSERT_TRUE(r->declares_writes());
  uint64_t shipped = 0;
  for (int round = 0; round < 20; ++round) {
    for (int p = round % 7; p < 64; p += 5) {
      std::byte* at = r->bytes() + p * kPage + 3 * round;
      std::memset(at, round + 1, 8);
      r->declare(at, 8);
      shipped += 8;
    }
    // Declared twice, shipped once.
    r->declare(r->bytes() + (round % 7) * kPage + 3 * round, 8);
    auto e = rt.commit("r" + std::to_string(round));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
    ASSERT_EQ(agent.Image(64 * kPage), View(r, 64 * kPage)) << "round " << round;
  }
  EXPECT_EQ(rt.stats().bytes_committed, shipped);
  EXPECT_EQ(rt.stats().bytes_declared, shipped + 20 * 8);
}

// Without verification an undeclared write is simply not shipped: that is
// the contract, and why tests run with SPARE_VERIFY_WRITES=1 (next test).
TEST_P(RuntimeTest, UndeclaredWriteIsNotShipped) {
  unsetenv("SPARE_VERIFY_WRITES");
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  RegionOptions o;
  o.writes = WriteTracking::kDeclared;
  Region* r = *rt.region("heap", 16 * kPage, o);
  r->bytes()[5] = std::byte{1};
  r->declare(r->bytes() + 5, 1);
  r->bytes()[3 * kPage + 7] = std::byte{2};  // not declared
  auto e = rt.commit();
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(rt.wait_durable(*e, 5000).ok());
  const std::string image = agent.Image(16 * kPage);
  EXPECT_EQ(image[5], 1);
  EXPECT_EQ(image[3 * kPage + 7], 0);
  EXPECT_EQ(rt.stats().bytes_committed, 1u);
}

// SPARE_VERIFY_WRITES=1: a byte written but not declared makes commit()
// fail with kUndeclaredWrite naming its offset, and nothing of that epoch
// is handed over; declared neighbours on the same page are fine.
TEST_P(RuntimeTest, VerifyWritesCatchesAnUndeclaredByte) {
  setenv("SPARE_VERIFY_WRITES", "1", 1);
  FakeAgent agent(4, 1 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_VERIFY_WRITES");
  RegionOptions o;
  o.writes = WriteTracking::kDeclared;
  Region* r = *rt.region("heap", 16 * kPage, o);
  for (int round = 0; round < 5; ++round) {  // honest rounds pass
    std::memset(r->bytes() + 2 * kPage + 100, round + 1, 50);
    r->declare(r->bytes() + 2 * kPage + 100, 50);
    auto e = rt.commit();
    ASSERT_TRUE(e.ok()) << e.status().ToString();
  }
  EXPECT_GT(rt.stats().pages_verified, 0u);
  const uint64_t handed = rt.epoch();
  std::memset(r->bytes() + 2 * kPage + 100, 9, 50);
  r->declare(r->bytes() + 2 * kPage + 100, 50);
  r->bytes()[2 * kPage + 151] = std::byte{7};  // one byte past the declared range
  auto e = rt.commit();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kUndeclaredWrite) << e.status().ToString();
  EXPECT_NE(e.status().message().find("offset 0x2097"), std::string::npos)
      << e.status().ToString();
  EXPECT_EQ(rt.epoch(), handed);
}

// A program without an agent can be verified too (unit tests of code that
// keeps its data in a declared region).
TEST(UnprotectedRuntime, VerifyWritesRunsWithoutAnAgent) {
  setenv("SPARE_VERIFY_WRITES", "1", 1);
  auto rt = Runtime::Unprotected();
  unsetenv("SPARE_VERIFY_WRITES");
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  RegionOptions o;
  o.writes = WriteTracking::kDeclared;
  Region* r = *rt->region("heap", 16 * kPage, o);
  r->bytes()[10] = std::byte{1};
  r->declare(r->bytes() + 10, 1);
  ASSERT_TRUE(rt->commit().ok());
  r->bytes()[kPage] = std::byte{1};
  auto e = rt->commit();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kUndeclaredWrite);
  EXPECT_EQ(rt->commit().status().code(), Code::kUndeclaredWrite);  // sticky
}

// Pacing (issue 7 item 4): back-to-back commits that cost more than the
// allowed share of the time between them are merged, none longer than the
// budget, and the merged epoch still carries every write.
TEST_P(RuntimeTest, PacingMergesCostlyBackToBackCommitsWithinTheBudget) {
  setenv("SPARE_PACE_SHARE", "1", 1);
  setenv("SPARE_PACE_BUDGET_US", "20000", 1);
  FakeAgent agent(8, 4 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_PACE_SHARE");
  unsetenv("SPARE_PACE_BUDGET_US");
  Region* r = *rt.region("heap", 512 * kPage);
  using Clock = std::chrono::steady_clock;
  Clock::time_point first_merged{};
  bool merging = false;
  Clock::duration longest{};
  uint64_t last = 0;
  for (int i = 0; i < 200; ++i) {
    for (int p = 0; p < 512; p += 2) r->bytes()[p * kPage + i % 64] = std::byte(i + 1);
    const uint64_t before = rt.epoch();
    const auto now = Clock::now();
    auto e = rt.commit();
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    last = *e;
    if (rt.epoch() == before) {
      if (!merging) first_merged = now;
      merging = true;
    } else if (merging) {
      longest = std::max(longest, now - first_merged);
      merging = false;
    }
    ASSERT_TRUE(rt.poll().ok());
  }
  const RuntimeStats st = rt.stats();
  EXPECT_GT(st.paced_commits, 0u);
  EXPECT_LT(st.commits, 200u);
  // Outputs of a merged commit waited at most the 20 ms budget (plus the
  // time of one loop iteration here, on a loaded machine).
  EXPECT_LT(longest, std::chrono::milliseconds(20 + 30));
  for (int t = 0; t < 200 && rt.commit_deferred(); ++t) {
    usleep(5000);
    ASSERT_TRUE(rt.commit().ok());
  }
  ASSERT_FALSE(rt.commit_deferred());
  ASSERT_TRUE(rt.wait_durable(rt.epoch(), 5000).ok());
  EXPECT_GE(rt.epoch(), 1u);
  EXPECT_LE(last, rt.epoch() + 1);
  EXPECT_EQ(agent.Image(512 * kPage), View(r, 512 * kPage));
}

// A program that commits and then waits for that epoch works with pacing:
// wait_durable() ships an epoch pacing held back (a second commit right
// behind one in flight).
TEST_P(RuntimeTest, WaitDurableShipsAPacedCommit) {
  setenv("SPARE_PACE_SHARE", "1", 1);
  setenv("SPARE_PACE_BUDGET_US", "10000000", 1);  // would hold it for 10 s
  FakeAgent agent(8, 4 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_PACE_BUDGET_US");
  Region* r = *rt.region("heap", 512 * kPage);
  int paced = 0;
  for (int i = 0; i < 100 && paced < 5; ++i) {
    for (int p = 0; p < 512; p += 2) r->bytes()[p * kPage] = std::byte(i + 1);
    ASSERT_TRUE(rt.commit("first" + std::to_string(i)).ok());
    for (int p = 1; p < 512; p += 2) r->bytes()[p * kPage] = std::byte(i + 1);
    const uint64_t before = rt.epoch();
    auto e = rt.commit("rec" + std::to_string(i));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    paced += rt.epoch() == before;
    const auto t = std::chrono::steady_clock::now();
    Status w = rt.wait_durable(*e, 5000);
    ASSERT_TRUE(w.ok()) << w.ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - t, std::chrono::seconds(2));
    ASSERT_EQ(agent.Image(512 * kPage), View(r, 512 * kPage));
  }
  EXPECT_GT(paced, 0) << "pacing never held a commit back";
}

TEST_P(RuntimeTest, PacingOffNeverMerges) {
  setenv("SPARE_PACE_SHARE", "0", 1);  // (the fixture's default; said again here)
  FakeAgent agent(8, 4 << 20);
  Runtime rt = Attach(agent);
  unsetenv("SPARE_PACE_SHARE");
  Region* r = *rt.region("heap", 512 * kPage);
  for (int i = 0; i < 50; ++i) {
    for (int p = 0; p < 512; p += 2) r->bytes()[p * kPage] = std::byte(i + 1);
    ASSERT_TRUE(rt.commit().ok());
    ASSERT_TRUE(rt.wait_durable(rt.epoch(), 5000).ok());
  }
  EXPECT_EQ(rt.stats().paced_commits, 0u);
}

TEST(PaceOptions, BadValuesAreNamed) {
  setenv("SPARE_PACE_SHARE", "150", 1);
  auto o = PaceOptionsFromEnv();
  unsetenv("SPARE_PACE_SHARE");
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("SPARE_PACE_SHARE=\"150\""), std::string::npos);
  setenv("SPARE_PACE_BUDGET_US", "soon", 1);
  o = PaceOptionsFromEnv();
  unsetenv("SPARE_PACE_BUDGET_US");
  ASSERT_FALSE(o.ok());
  EXPECT_EQ(o.status().code(), Code::kInvalidArgument);
  o = PaceOptionsFromEnv();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->share_pct, 10u);
  EXPECT_EQ(o->budget_ns, 2'000'000u);
}

INSTANTIATE_TEST_SUITE_P(Trackers, RuntimeTest, ::testing::Values("uffd", "mprotect"));

TEST(RuntimeAttach, BadCopyThreadsIsRefused) {
  FakeAgent agent(4, 1 << 20);
  setenv("SPARE_AGENT", agent.dir().c_str(), 1);
  setenv("SPARE_INSTANCE", "t", 1);
  setenv("SPARE_COPY_THREADS", "lots", 1);
  auto rt = Runtime::Attach();
  unsetenv("SPARE_COPY_THREADS");
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().code(), Code::kInvalidArgument);
  EXPECT_NE(rt.status().message().find("SPARE_COPY_THREADS"), std::string::npos);
}

TEST(RuntimeAttach, WithoutAgentSaysHowToStart) {
  unsetenv("SPARE_AGENT");
  auto rt = Runtime::Attach();
  ASSERT_FALSE(rt.ok());
  EXPECT_NE(rt.status().message().find("spare run"), std::string::npos);
}

TEST(RuntimeAttach, UnprotectedReleasesAtOnce) {
  auto rt = Runtime::Unprotected();
  ASSERT_TRUE(rt.ok());
  Region* r = *rt->region("heap", 4 * kPage);
  r->bytes()[0] = std::byte{1};
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  UniqueFd app(sv[0]), client(sv[1]);
  ASSERT_TRUE(rt->gate().send(app.get(), "x").ok());
  char c;
  EXPECT_EQ(read(client.get(), &c, 1), 1);
  // An output tagged with an explicit epoch leaves once that epoch commits.
  ASSERT_TRUE(rt->gate().send(app.get(), "y", 1).ok());
  EXPECT_EQ(read(client.get(), &c, 1), -1);
  ASSERT_TRUE(rt->commit().ok());
  EXPECT_EQ(read(client.get(), &c, 1), 1);
  EXPECT_EQ(c, 'y');
}

}  // namespace
}  // namespace spare
