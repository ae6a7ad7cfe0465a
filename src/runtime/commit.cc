// The epoch pipeline: collect dirty pages, copy them into free staging
// slots, hand the slots over, return. Released answers free the slots;
// Durable answers release the outputs (connection.cc).
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "common/check.h"
#include "region/mapping.h"
#include "runtime/runtime_impl.h"

namespace spare {
namespace {

// Past these a commit blocks for free slots instead of deferring.
constexpr uint32_t kMaxDeferrals = 256;
// How long a blocked commit waits for a free slot before it gives up with
// kUnavailable (the collected pages stay in carry_ for the next commit).
// $SPARE_COMMIT_WAIT_MS overrides it.
constexpr int64_t kDefaultCommitWaitMs = 30'000;

int64_t CommitWaitMs() {
  const char* v = std::getenv("SPARE_COMMIT_WAIT_MS");
  if (v == nullptr || *v == '\0') return kDefaultCommitWaitMs;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return *end == '\0' && n > 0 ? n : kDefaultCommitWaitMs;
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

Result<uint64_t> EnvUint(const char* name, uint64_t dflt, uint64_t max) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(v, &end, 10);
  if (*end != '\0' || errno != 0 || n > max || *v == '-')
    return Status(Code::kInvalidArgument, std::string(name) + "=\"" + v +
                                              "\": expected an integer from 0 to " +
                                              std::to_string(max));
  return n;
}

}  // namespace

Result<PaceOptions> PaceOptionsFromEnv() {
  PaceOptions o;
  SPARE_ASSIGN_OR_RETURN(uint64_t share, EnvUint("SPARE_PACE_SHARE", o.share_pct, 100));
  SPARE_ASSIGN_OR_RETURN(uint64_t budget_us,
                         EnvUint("SPARE_PACE_BUDGET_US", o.budget_ns / 1000, 10'000'000));
  o.share_pct = static_cast<uint32_t>(share);
  o.budget_ns = budget_us * 1000;
  return o;
}

// True when this commit should merge into the next one: recent commits
// cost more than the allowed share of the time between them, an epoch is
// in flight (handed over, not yet durable), and the first commit merged
// since the last shipped one is younger than the budget. The averages
// weigh the last few commits (1/8 each), so a burst starts pacing within a
// few epochs and an idle spell ends it at once (the next interval is long).
// Merging only behind an epoch in flight costs the merged outputs little:
// they could not be released before that epoch anyway, and the Durable
// message that ends it wakes the program's loop, which commits again
// (commit_deferred() says it should). Merging when nothing was in flight
// held outputs until the program's next commit() or timer: with clients
// that wait for their replies nothing else came, and spare-kv's SET
// throughput fell to 0.52 of unprotected where it was 0.67 with pacing
// off (issue 7). The merged commit is not shipped from poll(): it would
// carry writes made after that commit() under its older record.
bool RuntimeImpl::Pace(uint64_t now_ns) {
  if (pace_.share_pct == 0 || pace_.budget_ns == 0 || last_ship_ns_ == 0) return false;
  if (durable_ >= epoch_) return false;  // nothing in flight to wait behind
  const uint64_t since = now_ns - last_ship_ns_;
  const uint64_t interval = std::max(pace_interval_ns_, since);
  if (pace_cost_ns_ * 100 <= uint64_t{pace_.share_pct} * interval) return false;
  if (pace_since_ns_ == 0) pace_since_ns_ = now_ns;
  return now_ns - pace_since_ns_ < pace_.budget_ns;
}

// wait_durable() on the epoch a paced commit was promised: ship it now.
Status RuntimeImpl::ShipPaced() {
  if (!paced_pending_ || !error_.ok()) return Status::Ok();
  paced_pending_ = false;
  std::string record = std::move(paced_record_);
  return CommitNow(std::as_bytes(std::span(record.data(), record.size())), 0).status();
}

void RuntimeImpl::Paced(uint64_t start_ns, uint64_t end_ns) {
  const uint64_t cost = end_ns - start_ns;
  if (last_ship_ns_ != 0) {
    const uint64_t interval = start_ns - last_ship_ns_;
    pace_interval_ns_ = pace_interval_ns_ ? (7 * pace_interval_ns_ + interval) / 8 : interval;
    pace_cost_ns_ = pace_cost_ns_ ? (7 * pace_cost_ns_ + cost) / 8 : cost;
  }
  last_ship_ns_ = start_ns;
  pace_since_ns_ = 0;
}

// Adds what was written since the last collection to carry_, keeping it
// sorted by (region, offset) and merged, so bytes collected twice (once in
// a deferred epoch, again after a later write) ship once: for page-tracked
// regions the pages the tracker reports, for declared regions the declared
// byte ranges (checked against the tracker under $SPARE_VERIFY_WRITES).
Status RuntimeImpl::Collect() {
  const uint64_t t0 = NowNs();
  const size_t had = carry_.size();
  written_.clear();
  for (uint32_t i = 0; i < regions_.size(); ++i) {
    RegionState& rs = regions_[i];
    Region& r = *rs.region;
    const auto base = reinterpret_cast<uintptr_t>(r.data());
    scratch_.clear();
    if (!rs.log || rs.shadow) SPARE_RETURN_IF_ERROR(tracker_->Collect(r.data(), r.size(), &scratch_));
    if (!rs.log) {
      for (const auto& pr : scratch_) {
        carry_.push_back({i, pr.start - base, pr.bytes()});
        written_.push_back(carry_.back());
      }
      continue;
    }
    if (rs.shadow) SPARE_RETURN_IF_ERROR(VerifyDeclared(i, scratch_));
    region::WriteLog& log = *rs.log;
    region::NormalizeRanges(&log.ranges);
    for (const region::ByteRange& b : log.ranges) {
      carry_.push_back({i, b.offset, b.length});
      // The reclaimer works in pages: the private copies it may drop.
      const uint64_t lo = b.offset / region::kPageSize * region::kPageSize;
      const uint64_t hi = region::RoundUpToPage(b.end());
      PageSpan* last = written_.empty() ? nullptr : &written_.back();
      if (last && last->region == i && last->offset + last->length >= lo) {
        last->length = std::max(last->offset + last->length, hi) - last->offset;
      } else {
        written_.push_back({i, lo, hi - lo});
      }
    }
    stats_.declare_calls += log.calls;
    stats_.bytes_declared += log.bytes;
    log.ranges.clear();
    log.calls = log.bytes = 0;
  }
  // New spans are sorted (regions in order, tracker and normalized output
  // sorted, pages of declared ranges merged as they came); the next epoch
  // shipped carries them.
  reclaimer_.Written(epoch_ + 1, written_);
  if (had) NormalizeSpans(&carry_);  // else already sorted and merged
  stats_.collect_ns_total += NowNs() - t0;
  return Status::Ok();
}

// Unprotected: nothing ships, but the logs must not grow forever, and
// verification still runs.
Status RuntimeImpl::ForgetDeclared() {
  for (uint32_t i = 0; i < regions_.size(); ++i) {
    RegionState& rs = regions_[i];
    if (!rs.log) continue;
    if (rs.shadow) {
      scratch_.clear();
      SPARE_RETURN_IF_ERROR(tracker_->Collect(rs.region->data(), rs.region->size(), &scratch_));
      SPARE_RETURN_IF_ERROR(VerifyDeclared(i, scratch_));
    }
    stats_.declare_calls += rs.log->calls;
    stats_.bytes_declared += rs.log->bytes;
    rs.log->ranges.clear();
    rs.log->calls = rs.log->bytes = 0;
  }
  return Status::Ok();
}

// Drops the private copies of pages that stayed clean for a while and
// whose epoch is in the image (runtime/reclaim.h): they read from the image
// again, still write-protected. Runs inside commit(), right after Collect(),
// when nothing writes the regions — a page written between the collection
// and the madvise would lose that write. A refused madvise just keeps the
// copy (memory, not data).
void RuntimeImpl::DropCleanCopies() {
  const uint64_t t0 = NowNs();
  drops_.clear();
  reclaimer_.Take(durable_, NowNs(), &drops_);
  for (const PageSpan& s : drops_) {
    if (::madvise(regions_[s.region].region->bytes() + s.offset, s.length, MADV_DONTNEED) == 0) {
      stats_.pages_dropped += s.length / region::kPageSize;
    } else {
      stats_.drop_errors++;
    }
  }
  stats_.drop_ns_total += NowNs() - t0;
}

// Copies carry_ into free slots and sends Commit. False (and *error ok)
// when the slots are busy or the agent is away: the caller defers or waits.
bool RuntimeImpl::TryShip(std::span<const std::byte> record, Status* error) {
  if (!connected_) return false;
  runs_.clear();
  uint64_t bytes = 0;
  for (const PageSpan& p : carry_) {
    runs_.push_back({p.region, regions_[p.region].region->bytes() + p.offset, p.offset, p.length});
    bytes += p.length;
  }
  epoch::EpochPlan plan = epoch::PlanEpoch(staging_, runs_, record.size());
  if (plan.parts > staging_.slot_count) {
    *error = Status(Code::kResourceExhausted,
                    "epoch " + std::to_string(epoch_ + 1) + " has " + std::to_string(bytes) +
                        " dirty bytes, more than the staging area holds (" +
                        std::to_string(staging_.slot_count) + " slots of " +
                        std::to_string(staging_.slot_size) +
                        " bytes); commit more often or start the instance with larger "
                        "`spare run --slots/--slot-size`");
    return false;
  }
  planned_parts_ = plan.parts;
  if (plan.parts > FreeSlots()) return false;
  const uint64_t e = epoch_ + 1;
  const uint32_t first = next_slot_;
  const uint64_t t_copy = NowNs();
  epoch::FillEpoch(staging_, generation_, e, first, plan, runs_, record, copy_pool_.get());
  const uint64_t t_send = NowNs();
  stats_.copy_ns_total += t_send - t_copy;
  ipc::Message c;
  c.type = ipc::MsgType::kCommit;
  c.generation = generation_;
  c.body = {{"epoch", e}, {"first_slot", first}, {"parts", plan.parts}};
  Status st = ipc::Send(sock_.get(), c);
  stats_.handover_ns_total += NowNs() - t_send;
  if (!st.ok()) {
    if (st.code() != Code::kUnavailable) *error = st;
    Disconnected(st);
    return false;  // slots are still ours; carry_ is intact
  }
  in_flight_.push_back({e, first, plan.parts,
                        std::string(reinterpret_cast<const char*>(record.data()), record.size())});
  next_slot_ = (first + plan.parts) % staging_.slot_count;
  busy_ += plan.parts;
  epoch_ = e;
  gate_.set_pending_epoch(e + 1);
  stats_.commits++;
  stats_.pages_committed += bytes / region::kPageSize;
  stats_.bytes_committed += bytes;
  stats_.ranges_committed += runs_.size();
  carry_.clear();
  deferrals_ = 0;
  return true;
}

Result<uint64_t> RuntimeImpl::commit(std::span<const std::byte> record) {
  if (!protected_) {  // every epoch is durable at once
    SPARE_RETURN_IF_ERROR(error_);
    if (Status st = ForgetDeclared(); !st.ok()) {
      error_ = st;
      return st;
    }
    ++epoch_;
    durable_ = epoch_;
    (void)gate_.release(durable_);
    return epoch_;
  }
  SPARE_RETURN_IF_ERROR(error_);
  if (record.size() > epoch::kMaxRecord)
    return Status(Code::kInvalidArgument,
                  "record of " + std::to_string(record.size()) + " bytes exceeds the 64 KiB limit");
  const uint64_t t0 = NowNs();
  if (connected_ && Pace(t0)) {
    // Merged into the next epoch without collecting anything: its outputs
    // wait for that one, at most the pacing budget longer. The record is
    // kept in case wait_durable() must ship it before the next commit().
    ++deferrals_;
    stats_.paced_commits++;
    paced_record_.assign(reinterpret_cast<const char*>(record.data()), record.size());
    paced_pending_ = true;
    return epoch_ + 1;
  }
  paced_pending_ = false;
  return CommitNow(record, t0);
}

Result<uint64_t> RuntimeImpl::CommitNow(std::span<const std::byte> record, uint64_t t0) {
  if (t0 == 0) t0 = NowNs();
  Status st = Drain();  // frees the slots of epochs applied meanwhile
  if (st.ok() && !connected_) st = TryReconnect();
  if (st.ok()) st = Collect();
  Status ship_error;
  bool shipped = st.ok() && TryShip(record, &ship_error);
  if (st.ok() && !shipped && ship_error.ok()) {
    // Merge into the next epoch while the merged epoch stays small next to
    // the ring; past half of it, wait for slots instead: a carry that kept
    // growing while the agent is slower than the app would end up larger
    // than the whole ring, which no number of free slots can ship.
    if (deferrals_ < kMaxDeferrals && 2 * planned_parts_ <= staging_.slot_count) {
      ++deferrals_;  // merged into the next epoch: its outputs wait for that one
      stats_.deferred_commits++;
    } else {
      stats_.backpressure_waits++;
      const int64_t wait_ms = CommitWaitMs();
      const uint64_t deadline = t0 + static_cast<uint64_t>(wait_ms) * 1'000'000;
      while (st.ok() && !shipped && ship_error.ok()) {
        if (NowNs() >= deadline) {
          // Not sticky: nothing is lost (carry_ keeps the pages), and the
          // next commit() tries again.
          return Status(Code::kUnavailable,
                        "commit waited " + std::to_string(wait_ms) +
                            " ms for a free staging slot; the agent released none (is it "
                            "stopped or overloaded?). The epoch's pages are kept for the "
                            "next commit; outputs stay held");
        }
        st = WaitEvent(20);
        if (st.ok()) shipped = TryShip(record, &ship_error);
      }
    }
  }
  if (st.ok()) st = ship_error;
  if (!st.ok()) {
    error_ = st;
    return st;
  }
  if (reclaimer_.enabled()) DropCleanCopies();
  const uint64_t t1 = NowNs();
  if (shipped) Paced(t0, t1);
  const uint64_t dt = t1 - t0;
  stats_.commit_ns_total += dt;
  stats_.commit_ns_max = std::max(stats_.commit_ns_max, dt);
  return epoch_ + (shipped ? 0 : 1);
}

}  // namespace spare
