// Runtime: the public handle, attach, regions, config checkpoints.
#include "spare/runtime.h"

#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "ipc/body.h"
#include "region/mapping.h"
#include "runtime/runtime_impl.h"
#include "spare/declare.h"

namespace spare {
namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// $SPARE_VERIFY_WRITES: 1 checks every commit of a declared region against
// the page tracker (spare/runtime.h, WriteTracking::kDeclared).
Result<bool> VerifyWritesFromEnv() {
  const char* v = Env("SPARE_VERIFY_WRITES");
  if (!v || std::string_view(v) == "0") return false;
  if (std::string_view(v) == "1") return true;
  return Status(Code::kInvalidArgument,
                "SPARE_VERIFY_WRITES=\"" + std::string(v) + "\": expected 0 or 1");
}

Status NewEpollAndTimer(UniqueFd* epfd, UniqueFd* timer) {
  epfd->reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epfd->valid()) return Status::FromErrno("epoll_create1", errno);
  timer->reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer->valid()) return Status::FromErrno("timerfd_create", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = timer->get();
  if (epoll_ctl(epfd->get(), EPOLL_CTL_ADD, timer->get(), &ev) != 0)
    return Status::FromErrno("epoll_ctl", errno);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<RuntimeImpl>> RuntimeImpl::Attach() {
  const char* dir = Env("SPARE_AGENT");
  if (!dir)
    return Status(Code::kFailedPrecondition,
                  "SPARE_AGENT is not set: start this program under an agent with "
                  "`spare run --agent DIR --id ID -- PROGRAM ARGS`");
  const char* id = Env("SPARE_INSTANCE");
  if (!id)
    return Status(Code::kFailedPrecondition,
                  "SPARE_INSTANCE is not set: start this program with `spare run`, which names "
                  "the instance");
  std::unique_ptr<RuntimeImpl> rt(new RuntimeImpl());
  rt->protected_ = true;
  rt->agent_dir_ = dir;
  rt->id_ = id;
  if (const char* g = Env("SPARE_GENERATION")) rt->generation_ = std::strtoull(g, nullptr, 10);
  SPARE_ASSIGN_OR_RETURN(region::TrackerKind kind, region::TrackerKindFromEnv());
  SPARE_ASSIGN_OR_RETURN(rt->tracker_, region::DirtyTracker::Create(kind));
  SPARE_ASSIGN_OR_RETURN(rt->verify_writes_, VerifyWritesFromEnv());
  SPARE_ASSIGN_OR_RETURN(rt->pace_, PaceOptionsFromEnv());
  SPARE_ASSIGN_OR_RETURN(unsigned helpers, epoch::CopyHelpersFromEnv());
  rt->copy_pool_ = std::make_unique<epoch::CopyPool>(helpers);
  SPARE_ASSIGN_OR_RETURN(uint64_t clean_after_ns, DropCleanAfterNsFromEnv());
  rt->reclaimer_ = Reclaimer(Reclaimer::Options{.clean_after_ns = clean_after_ns});
  SPARE_RETURN_IF_ERROR(NewEpollAndTimer(&rt->epfd_, &rt->timer_));
  SPARE_ASSIGN_OR_RETURN(bool exit_helper, ExitHelperFromEnv());
  if (exit_helper) {
    // Only speed depends on it: without one, a kill -9 pays the teardown.
    auto h = ExitHelper::Start();
    if (h.ok()) {
      rt->exit_helper_ = std::move(h).value();
    } else {
      std::fprintf(stderr, "spare: no exit helper (%s); a kill -9 of this instance waits for "
                           "its memory to be unmapped before the agent can restart it\n",
                   h.status().ToString().c_str());
    }
  }
  if (rt->reclaimer_.enabled()) SPARE_RETURN_IF_ERROR(rt->AddDropTimer());
  SPARE_RETURN_IF_ERROR(rt->Connect(/*reattach=*/false));
  return rt;
}

Result<std::unique_ptr<RuntimeImpl>> RuntimeImpl::Unprotected() {
  std::unique_ptr<RuntimeImpl> rt(new RuntimeImpl());
  rt->protected_ = false;
  rt->id_ = Env("SPARE_INSTANCE") ? Env("SPARE_INSTANCE") : "unprotected";
  // Unprotected, the tracker serves only to verify declared writes, so the
  // same program can be checked without an agent (unit tests).
  SPARE_ASSIGN_OR_RETURN(rt->verify_writes_, VerifyWritesFromEnv());
  if (rt->verify_writes_) {
    SPARE_ASSIGN_OR_RETURN(region::TrackerKind kind, region::TrackerKindFromEnv());
    SPARE_ASSIGN_OR_RETURN(rt->tracker_, region::DirtyTracker::Create(kind));
  }
  SPARE_RETURN_IF_ERROR(NewEpollAndTimer(&rt->epfd_, &rt->timer_));
  rt->gate_.set_pending_epoch(0);  // everything is "durable" at once
  return rt;
}

RuntimeImpl::~RuntimeImpl() {
  for (auto& r : regions_) {
    const bool tracked = !r.log || r.shadow;
    if (tracker_ && tracked) (void)tracker_->Remove(r.region->data(), r.region->size());
    if (r.log) region::UnregisterWriteLog(r.log.get());
    if (r.shadow) ::munmap(r.shadow, r.region->size());
    ::munmap(r.region->data(), r.region->size());
  }
  if (staging_.base) ::munmap(staging_.base, staging_.size);
}

Result<Region*> RuntimeImpl::region(std::string_view name, size_t size, RegionOptions options) {
  size = region::RoundUpToPage(size);
  for (auto& r : regions_) {
    if (r.region->name() != name) continue;
    if (r.region->size() != size)
      return Status(Code::kInvalidArgument, "region " + std::string(name) + " is mapped with " +
                                                std::to_string(r.region->size()) +
                                                " bytes, asked " + std::to_string(size));
    return r.region.get();
  }
  if (size == 0) return Status(Code::kInvalidArgument, "region size must be > 0");
  // Unprotected, nothing ships: a declared region keeps no log (declaring
  // costs one compare, a fair baseline) unless writes are verified.
  const bool declared =
      options.writes == WriteTracking::kDeclared && (protected_ || verify_writes_);
  RegionState rs;
  void* base = nullptr;
  if (!protected_) {
    uint64_t addr = options.address ? options.address : region::DeriveAddress(id_, name, size);
    SPARE_ASSIGN_OR_RETURN(base, region::MapAnonymousFixed(addr, size));
  } else {
    SPARE_RETURN_IF_ERROR(error_);
    ipc::Message m;
    m.type = ipc::MsgType::kRegion;
    m.generation = generation_;
    m.body = {{"name", std::string(name)}, {"size", size}, {"address", options.address}};
    SPARE_ASSIGN_OR_RETURN(ipc::Message reply, Request(std::move(m)));
    ipc::Body b(reply.body, "agent's answer to Region");
    SPARE_ASSIGN_OR_RETURN(uint64_t index, b.Uint("index"));
    SPARE_ASSIGN_OR_RETURN(uint64_t address, b.Uint("address"));
    SPARE_ASSIGN_OR_RETURN(uint64_t got, b.Uint("size"));
    if (reply.fds.size() != 1)
      return Status(Code::kBadMessage, "agent's answer to Region lacks the region's fd");
    if (index != regions_.size() || got != size)
      return Status(Code::kInternal,
                    "agent numbered region " + std::string(name) + " " + std::to_string(index) +
                        " with size " + std::to_string(got) + "; expected " +
                        std::to_string(regions_.size()) + " and " + std::to_string(size));
    rs.memfd = std::move(reply.fds[0]);
    SPARE_ASSIGN_OR_RETURN(base, region::MapPrivateFixed(rs.memfd.get(), address, size));
  }
  rs.region.reset(new Region(std::string(name), base, size, declared));
  // Page-tracked regions, and declared ones under verification, go to the
  // tracker; the others never fault and are never scanned.
  const bool tracked = tracker_ && (!declared || verify_writes_);
  Status st = Status::Ok();
  if (declared) {
    rs.log = std::make_unique<region::WriteLog>();
    rs.log->start = reinterpret_cast<uintptr_t>(base);
    rs.log->end = rs.log->start + size;
    if (!region::RegisterWriteLog(rs.log.get()))
      st = Status(Code::kResourceExhausted,
                  "at most " + std::to_string(region::kMaxWriteLogs) +
                      " regions per process may declare their writes");
  }
  if (st.ok() && declared && tracked) st = StartShadow(rs);
  if (st.ok() && tracked) st = tracker_->Add(base, size);
  if (!st.ok()) {
    if (rs.log) region::UnregisterWriteLog(rs.log.get());
    if (rs.shadow) ::munmap(rs.shadow, size);
    ::munmap(base, size);
    return st.With("region " + std::string(name));
  }
  regions_.push_back(std::move(rs));
  return regions_.back().region.get();
}

Status RuntimeImpl::poll() {
  if (!protected_) return Status::Ok();
  SPARE_RETURN_IF_ERROR(error_);
  Status st = Drain();
  if (st.ok() && drop_timer_.valid()) st = DropWhileIdle();
  if (!st.ok()) error_ = st;
  return st;
}

Status RuntimeImpl::wait_durable(uint64_t epoch, int timeout_ms) {
  if (!protected_) return Status::Ok();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  if (epoch == epoch_ + 1) {
    // Pacing merged the last commit into a next one that nobody may call:
    // ship it now, as that commit() would have.
    SPARE_RETURN_IF_ERROR(ShipPaced());
  }
  while (durable_ < epoch) {
    SPARE_RETURN_IF_ERROR(error_);
    if (epoch > epoch_)
      return Status(Code::kFailedPrecondition,
                    "epoch " + std::to_string(epoch) + " was not handed over (newest " +
                        std::to_string(epoch_) +
                        "); if commit() deferred it (staging busy or agent away), call commit() "
                        "again to ship it");
    int wait = 50;
    if (timeout_ms >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0)
        return Status(Code::kUnavailable, "epoch " + std::to_string(epoch) + " not durable after " +
                                              std::to_string(timeout_ms) + " ms");
      wait = static_cast<int>(std::min<int64_t>(left, 50));
    }
    Status st = WaitEvent(wait);
    if (!st.ok()) error_ = st;
  }
  return Status::Ok();
}

Result<ConfigLookup> RuntimeImpl::config_lookup(std::string_view key, uint64_t fingerprint) {
  if (!protected_) return ConfigLookup{};
  ipc::Message m;
  m.type = ipc::MsgType::kConfigGet;
  m.generation = generation_;
  m.body = {{"key", std::string(key)}, {"fingerprint", fingerprint}};
  SPARE_ASSIGN_OR_RETURN(ipc::Message reply, Request(std::move(m)));
  SPARE_ASSIGN_OR_RETURN(std::string state,
                         ipc::Body(reply.body, "agent's answer to ConfigGet").String("state"));
  if (state == "hit") return ConfigLookup{ConfigState::kHit, std::move(reply.blob)};
  if (state == "stale") return ConfigLookup{ConfigState::kStale, {}};
  if (state == "missing") return ConfigLookup{ConfigState::kMissing, {}};
  return Status(Code::kBadMessage, "agent answered ConfigGet with state '" + state + "'");
}

Status RuntimeImpl::config_save(std::string_view key, uint64_t fingerprint, std::string_view blob) {
  if (!protected_) return Status::Ok();
  if (blob.size() > ipc::kMaxBlob)
    return Status(Code::kInvalidArgument, "config value of " + std::to_string(blob.size()) +
                                              " bytes exceeds the " +
                                              std::to_string(ipc::kMaxBlob) + "-byte limit");
  ipc::Message m;
  m.type = ipc::MsgType::kConfigPut;
  m.generation = generation_;
  m.body = {{"key", std::string(key)}, {"fingerprint", fingerprint}};
  m.blob.assign(blob);
  return Request(std::move(m)).status();
}

Status RuntimeImpl::request_failover(std::string_view reason) {
  if (!protected_)
    return Status(Code::kFailedPrecondition,
                  "request_failover: this runtime is unprotected (no agent, no standby)");
  ipc::Message m;
  m.type = ipc::MsgType::kFailover;
  m.generation = generation_;
  m.body = {{"reason", std::string(reason.substr(0, 200))}};
  return Request(std::move(m)).status();
}

RuntimeStats RuntimeImpl::stats() const {
  RuntimeStats s = stats_;
  s.outputs_released = gate_.released_outputs();
  s.released_epoch = released_;
  s.durable_epoch = durable_;
  s.drop_refaults = reclaimer_.refaults();
  s.drop_window_ms = reclaimer_.enabled() ? reclaimer_.window_ns() / 1'000'000 : 0;
  s.exit_helper_pid = exit_helper_.pid();
  s.tracker = tracker_ ? std::string(tracker_->name()) : "none";
  if (copy_pool_) {
    s.copy_helpers = copy_pool_->helpers();
    s.bytes_copied_by_helpers = copy_pool_->helper_bytes();
  }
  return s;
}

// --- the public handle ---

void Region::declare(const void* p, size_t n) const {
  if (declares_) DeclareWrite(p, n);
}

Runtime::Runtime(std::unique_ptr<RuntimeImpl> impl) : impl_(std::move(impl)) {}
Runtime::Runtime(Runtime&&) noexcept = default;
Runtime& Runtime::operator=(Runtime&&) noexcept = default;
Runtime::~Runtime() = default;

Result<Runtime> Runtime::Attach() {
  SPARE_ASSIGN_OR_RETURN(auto impl, RuntimeImpl::Attach());
  return Runtime(std::move(impl));
}
Result<Runtime> Runtime::Unprotected() {
  SPARE_ASSIGN_OR_RETURN(auto impl, RuntimeImpl::Unprotected());
  return Runtime(std::move(impl));
}

bool Runtime::protected_mode() const { return impl_->protected_mode(); }
bool Runtime::reads_wait_for_epoch() const { return impl_->reads_wait_for_epoch(); }
const std::string& Runtime::instance_id() const { return impl_->instance_id(); }
Result<Region*> Runtime::region(std::string_view name, size_t size, RegionOptions options) {
  return impl_->region(name, size, options);
}
bool Runtime::resumed() const { return impl_->resumed(); }
std::span<const std::byte> Runtime::record() const { return impl_->record(); }
Result<uint64_t> Runtime::commit(std::span<const std::byte> record) {
  return impl_->commit(record);
}
uint64_t Runtime::epoch() const { return impl_->epoch(); }
uint64_t Runtime::pending_epoch() const { return impl_->pending_epoch(); }
uint64_t Runtime::durable_epoch() const { return impl_->durable_epoch(); }
bool Runtime::commit_deferred() const { return impl_->commit_deferred(); }
Gate& Runtime::gate() { return impl_->gate(); }
int Runtime::fd() const { return impl_->fd(); }
Status Runtime::poll() { return impl_->poll(); }
Status Runtime::wait_durable(uint64_t epoch, int timeout_ms) {
  return impl_->wait_durable(epoch, timeout_ms);
}
Result<ConfigLookup> Runtime::config_lookup(std::string_view key, uint64_t fingerprint) {
  return impl_->config_lookup(key, fingerprint);
}
Status Runtime::request_failover(std::string_view reason) {
  return impl_->request_failover(reason);
}
Status Runtime::config_save(std::string_view key, uint64_t fingerprint, std::string_view blob) {
  return impl_->config_save(key, fingerprint, blob);
}
RuntimeStats Runtime::stats() const { return impl_->stats(); }

}  // namespace spare
