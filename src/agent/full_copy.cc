// Full copy of a committed image to the standby (agent/hot_link.h).
//
// Needed when the replica lacks epochs that exist only in the image now: a
// new or restarted standby (empty replica), a reconnect after a gap, an
// instance adopted by a new agent. Steps, driven from the loop:
//   1. quiesce: new epochs are held (applied locally later, shipped later);
//      once no apply is in flight the image is exactly epoch E;
//   2. Copy{E}: the standby empties the replica and answers CopyKeys (where
//      its regions take puts);
//   3. every extent of the image that was ever written (SEEK_DATA /
//      SEEK_HOLE on the memfds: never-written pages are neither stored nor
//      shipped) is put, at most kWindow bytes between flushes;
//   4. CopyDone(E, record); the standby's Ack(E) makes the replica epoch E:
//      every epoch up to E counts as acknowledged, the held epochs are
//      applied locally and everything after E ships as usual.
// Outputs stay held throughout (no epoch after the replica's is durable), so
// nothing a client saw depends on the copy.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "agent/agent.h"
#include "agent/hot_link.h"
#include "hot/wire.h"

namespace spare::agent {
namespace {

constexpr uint64_t kChunk = 4ULL << 20;    // one put
constexpr uint64_t kWindow = 64ULL << 20;  // put between two flushes

double MiB(uint64_t b) { return static_cast<double>(b) / (1 << 20); }

// The ranges of `fd` (`size` bytes) that hold data, page aligned.
Status DataExtents(int fd, uint64_t size, uint32_t region,
                   std::vector<Instance::FullCopy::Extent>& out) {
  off_t at = 0;
  while (static_cast<uint64_t>(at) < size) {
    off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // nothing more
      return Status::FromErrno("lseek(SEEK_DATA) on an image memfd", errno);
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return Status::FromErrno("lseek(SEEK_HOLE) on an image memfd", errno);
    const uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
    if (end > static_cast<uint64_t>(data))
      out.push_back({region, static_cast<uint64_t>(data), end - static_cast<uint64_t>(data)});
    at = hole;
  }
  return Status::Ok();
}

}  // namespace

Instance::FullCopy::~FullCopy() {
  keys.clear();
  for (auto& [p, n] : maps) ::munmap(p, n);
}

// A refused or failed copy (the standby busy applying, a flush that failed)
// is tried again from a fresh Reserve after a wait that doubles, 200 ms to
// 5 s, until one succeeds; a reconnect retries at once.
void Agent::BlockCopy(Instance& inst) {
  inst.standby_blocked = true;
  const uint32_t ms = std::min<uint32_t>(5000, 200u << std::min<uint32_t>(inst.copy_failures, 5));
  inst.copy_failures++;
  inst.copy_retry_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  spdlog::warn("instance {}: full copy to the standby is tried again in {} ms (failure {} in a "
               "row); its outputs stay held",
               inst.rec.spec.id, ms, inst.copy_failures);
}

bool Agent::CopyShipped(const Instance& inst) {
  return inst.copy && inst.copy->phase == Instance::FullCopy::Phase::kDone;
}

void Agent::BeginFullCopy(Instance& inst) {
  if (inst.copy) return;
  inst.copy = std::make_shared<Instance::FullCopy>();
  inst.copy->started = std::chrono::steady_clock::now();
  spdlog::info("instance {}: the standby's replica lacks epochs that only the image holds now: "
               "full copy of the image (outputs stay held until it is done)",
               inst.rec.spec.id);
  ContinueFullCopy(inst);
}

// Called whenever the copy may move on: after it begins, after an apply
// completes (quiescing), on CopyKeys, on each flush.
void Agent::ContinueFullCopy(Instance& inst) {
  auto c = inst.copy;
  if (!c) return;
  const std::string& id = inst.rec.spec.id;
  auto abort = [&](const Status& st) {
    inst.ship_errors++;
    spdlog::error("instance {}: full copy to the standby failed: {}; its outputs stay held, and "
                  "the copy starts again on the next connection to the standby",
                  id, st.ToString());
    EndFullCopy(inst, /*done=*/false);
    BlockCopy(inst);
  };
  switch (c->phase) {
    case Instance::FullCopy::Phase::kQuiescing: {
      if (inst.applies_in_flight > 0) return;  // OnApplied calls again
      c->epoch = inst.rec.epoch;
      c->record = inst.record;
      for (size_t i = 0; i < inst.rec.regions.size(); ++i) {
        const uint64_t size = inst.rec.regions[i].size;
        Status st = DataExtents(inst.region_fds[i].get(), size, static_cast<uint32_t>(i),
                                c->extents);
        if (!st.ok()) return abort(st);
        void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, inst.region_fds[i].get(), 0);
        if (p == MAP_FAILED) return abort(Status::FromErrno("mapping the image to copy it", errno));
        c->maps.emplace_back(static_cast<std::byte*>(p), size);
      }
      for (const auto& e : c->extents) c->total += e.length;
      c->phase = Instance::FullCopy::Phase::kKeys;
      c->seq = hot_->next_seq++;
      SendToStandby(static_cast<uint8_t>(hot::Type::kCopy), inst.standby_handle,
                    inst.rec.generation, c->seq, hot::Body(hot::Copy{c->epoch}));
      spdlog::info("instance {}: full copy of epoch {}: {:.1f} MiB written of {:.1f} MiB of "
                   "regions, in {} extent(s)",
                   id, c->epoch, MiB(c->total), [&] {
                     uint64_t n = 0;
                     for (const auto& r : inst.rec.regions) n += r.size;
                     return MiB(n);
                   }(),
                   c->extents.size());
      return;
    }
    case Instance::FullCopy::Phase::kKeys:
      return;  // OnCopyKeys moves it on
    case Instance::FullCopy::Phase::kPutting: {
      c->in_window = 0;
      AnnounceToStandby(std::min(kWindow, c->total - c->done));
      while (c->next < c->extents.size() && c->in_window < kWindow) {
        const auto& e = c->extents[c->next];
        const uint64_t n = std::min(kChunk, e.length - c->next_off);
        const uint64_t off = e.offset + c->next_off;
        Status st = hot_->data_by_message
                        ? SendData(inst.standby_handle, inst.rec.generation, c->seq, 1 + e.region,
                                   off, c->maps[e.region].first + off, n)
                        : hot_->ep->Put(c->maps[e.region].first + off, n,
                                        c->remote[e.region] + off, *c->keys[e.region]);
        if (!st.ok()) return abort(st);
        c->in_window += n;
        c->next_off += n;
        if (c->next_off == e.length) {
          c->next++;
          c->next_off = 0;
        }
      }
      const bool last = c->next == c->extents.size();
      const uint64_t window = c->in_window;
      Status st = hot_->ep->Flush([this, id, c, last, window](const Status& flushed) {
        Instance* in = FindMutable(id);
        if (!in || in->copy != c) return;  // ended meanwhile
        if (!flushed.ok()) {
          in->ship_errors++;
          spdlog::error("instance {}: full copy: flush failed: {}", id, flushed.ToString());
          EndFullCopy(*in, false);
          BlockCopy(*in);
          return;
        }
        c->done += window;
        const int quarter = c->total ? static_cast<int>(4 * c->done / c->total) : 4;
        if (quarter > c->last_logged_quarter && quarter < 4) {
          c->last_logged_quarter = quarter;
          spdlog::info("instance {}: full copy {}% ({:.1f} of {:.1f} MiB)", id, 25 * quarter,
                       MiB(c->done), MiB(c->total));
        }
        if (!last) return ContinueFullCopy(*in);
        c->phase = Instance::FullCopy::Phase::kDone;
        SendToStandby(static_cast<uint8_t>(hot::Type::kCopyDone), in->standby_handle,
                      in->rec.generation, c->epoch, hot::Body(hot::CopyDone{c->done, c->record}));
      });
      if (!st.ok()) return abort(st);
      return;
    }
    case Instance::FullCopy::Phase::kDone:
      return;  // the Ack of c->epoch ends it
  }
}

void Agent::OnCopyKeys(Instance& inst, std::span<const std::byte> body) {
  auto c = inst.copy;
  if (!c || c->phase != Instance::FullCopy::Phase::kKeys) return;
  auto m = hot::ParseCopyKeys(body);
  Status st = m.status();
  if (st.ok() && m->regions.size() != inst.rec.regions.size())
    st = Status(Code::kBadMessage, "CopyKeys names " + std::to_string(m->regions.size()) +
                                       " regions; the instance has " +
                                       std::to_string(inst.rec.regions.size()));
  for (size_t i = 0; st.ok() && i < inst.rec.regions.size(); ++i) {
    if (m->regions[i].size < inst.rec.regions[i].size) {
      st = Status(Code::kOutOfBounds, "CopyKeys: replica region " + std::to_string(i) + " is " +
                                          std::to_string(m->regions[i].size) +
                                          " bytes, smaller than the image's");
      break;
    }
    auto key = hot_->ep->UnpackKey(
        std::as_bytes(std::span(m->regions[i].key.data(), m->regions[i].key.size())));
    if (!key.ok()) {
      st = key.status();
      break;
    }
    c->keys.push_back(std::move(key).value());
    c->remote.push_back(m->regions[i].addr);
  }
  if (!st.ok()) {
    inst.ship_errors++;
    spdlog::error("instance {}: full copy: {}", inst.rec.spec.id, st.ToString());
    EndFullCopy(inst, false);
    BlockCopy(inst);
    return;
  }
  c->phase = Instance::FullCopy::Phase::kPutting;
  ContinueFullCopy(inst);
}

// The copy ends: done (the standby acknowledged its epoch) or abandoned.
// Either way the held epochs are applied locally now; after a done copy the
// epochs past it ship, after an abandoned one they wait (to_ship) for the
// next attempt.
void Agent::EndFullCopy(Instance& inst, bool done) {
  auto c = std::move(inst.copy);
  if (!c) return;
  if (done) {
    inst.copy_failures = 0;
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - c->started).count();
    inst.full_copies++;
    inst.full_copy_bytes += c->done;
    spdlog::info("instance {}: full copy done: the replica is epoch {} ({:.1f} MiB in {:.2f} s, "
                 "{:.0f} MiB/s); protected again",
                 inst.rec.spec.id, c->epoch, MiB(c->done), s, s > 0 ? MiB(c->done) / s : 0.0);
    inst.standby_acked = std::max(inst.standby_acked, c->epoch);
    while (!inst.unacked.empty() && inst.unacked.front().epoch <= c->epoch) {
      inst.epochs.MarkAcked(inst.unacked.front().epoch);
      inst.unacked.pop_front();
    }
  }
  std::deque<Instance::Ship> held;
  held.swap(inst.held);
  for (const auto& e : held) {
    Status st = PostApply(inst, e.epoch, e.first_slot, e.parts);
    if (!st.ok())
      spdlog::error("instance {}: epoch {} held during the full copy could not be queued: {}",
                    inst.rec.spec.id, e.epoch, st.ToString());
  }
  if (inst.epochs.Advance()) SendProgress(inst);
  if (!done) return;
  std::deque<Instance::Ship> queued;
  queued.swap(inst.to_ship);
  for (const auto& e : queued)
    if (e.epoch > c->epoch) ShipEpoch(inst, e.epoch, e.first_slot, e.parts);
}

}  // namespace spare::agent
