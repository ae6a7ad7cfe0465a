// Applying epochs off the agent loop. OnCommit (handlers_instance.cc)
// checks the message and queues the epoch; the apply worker validates the
// slots and writes them into the committed image; the completion, back on
// the loop, moves the image's epoch, frees the slots (Released) and
// releases outputs (Durable) through the instance's EpochQueue.
//
// A failed write is retried from the epoch's first write (applying is
// idempotent, DESIGN §2); the slots stay the agent's until then. If the
// epoch still cannot be written the image is torn — part epoch N, part
// N-1 — and marked so (InstanceRecord::image_torn, persisted): the
// instance fails, and nothing ever resumes from that image.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "agent/agent.h"

namespace spare::agent {

// What an apply job found, handed to the loop.
struct ApplyResult {
  Status status;
  std::string record;
  uint64_t bytes = 0;
  double seconds = 0;
  int retries = 0;
  bool torn = false;     // the image is now between epochs
  bool skipped = false;  // not tried: an earlier epoch was refused
};

namespace {

// Attempts at writing one epoch, and the pause before each retry. ENOMEM
// or ENOSPC on shmem can clear when another tenant frees memory; EIO
// rarely does. The pauses run on the apply worker, never on the loop.
constexpr int kApplyAttempts = 3;
constexpr std::chrono::milliseconds kRetryPause[kApplyAttempts - 1] = {
    std::chrono::milliseconds(2), std::chrono::milliseconds(20)};

// Everything an apply job reads, owned by the job (worker.h contract).
struct ApplyJob {
  std::shared_ptr<const StagingArea::Mapping> staging;
  std::vector<UniqueFd> fds;  // dups of the region memfds
  std::vector<epoch::RegionTarget> targets;
  std::shared_ptr<ApplyChain> chain;
  uint64_t generation = 0;
  uint64_t epoch = 0;
  uint32_t first_slot = 0;
  uint32_t parts = 0;
  const epoch::WriteFn* write = nullptr;  // test seam; null: pwrite
};

// Maps the image regions the chain has not mapped yet and points the
// targets at them. A region that cannot be mapped keeps pwrite(2).
void MapImages(ApplyJob& job) {
  ApplyChain& chain = *job.chain;
  if (job.write) return;  // the test seam sees every write
  for (size_t i = 0; i < job.targets.size(); ++i) {
    if (i >= chain.maps.size()) chain.maps.resize(i + 1);
    ApplyChain::Map& m = chain.maps[i];
    struct stat st {};
    if (::fstat(job.targets[i].fd, &st) != 0) st = {};
    const auto dev = static_cast<uint64_t>(st.st_dev), ino = static_cast<uint64_t>(st.st_ino);
    if (m.base == nullptr || m.size != job.targets[i].size || m.dev != dev || m.ino != ino) {
      if (m.base) ::munmap(m.base, m.size);
      void* p = ::mmap(nullptr, job.targets[i].size, PROT_READ | PROT_WRITE, MAP_SHARED,
                       job.targets[i].fd, 0);
      m = p == MAP_FAILED || ino == 0
              ? ApplyChain::Map{}
              : ApplyChain::Map{static_cast<std::byte*>(p), job.targets[i].size, dev, ino};
      if (p != MAP_FAILED && m.base == nullptr) ::munmap(p, job.targets[i].size);
    }
    job.targets[i].map = m.base;
  }
}

// Runs on the apply worker.
ApplyResult RunApply(ApplyJob& job) {
  ApplyResult out;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = std::to_string(job.epoch);
  ApplyChain& chain = *job.chain;
  if (chain.torn) {
    out.status = Status(Code::kTornImage, "epoch " + e + " not applied: the image is torn");
    return out;
  }
  if (chain.epoch + 1 != job.epoch) {
    out.skipped = true;
    out.status = Status(Code::kTornEpoch, "epoch " + e + " not applied: the image is at epoch " +
                                              std::to_string(chain.epoch) +
                                              " (an earlier epoch was refused)");
    return out;
  }
  MapImages(job);
  auto v = epoch::ValidateEpoch(job.staging->view, job.generation, job.epoch, job.first_slot,
                                job.parts, job.targets);
  if (!v.ok()) {
    out.status = v.status();  // nothing written: the image is still at epoch - 1
    return out;
  }
  for (int attempt = 1;; ++attempt) {
    out.status = epoch::WriteEpoch(*v, job.targets, job.write);
    if (out.status.ok()) break;
    if (attempt == kApplyAttempts) {
      chain.torn = true;
      out.torn = true;
      out.status = Status(Code::kTornImage,
                          "epoch " + e + " could not be written into the committed image after " +
                              std::to_string(kApplyAttempts) +
                              " attempts (last: " + out.status.ToString() + ")");
      return out;
    }
    ++out.retries;
    std::this_thread::sleep_for(kRetryPause[attempt - 1]);
  }
  chain.epoch = job.epoch;
  out.record = std::move(v->record);
  out.bytes = v->bytes;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace

ApplyChain::~ApplyChain() {
  for (const Map& m : maps)
    if (m.base) ::munmap(m.base, m.size);
}

// The apply chain, with its mappings of the image (whose munmap takes ~90 ns
// a page), is dropped on the apply worker, not on the loop.
void Agent::ReleaseImage(Instance& inst) {
  RetireOnStandby(inst);  // the replica of an image that is gone is of no use
  std::shared_ptr<ApplyChain> old = inst.ReleaseImage();
  if (!old) return;
  applier_->Post([c = std::move(old)]() mutable {
    c.reset();
    return Worker::Completion{};
  });
}

Status Agent::PostApply(Instance& inst, uint64_t epoch, uint32_t first_slot, uint32_t parts) {
  auto job = std::make_shared<ApplyJob>();
  job->staging = inst.staging.Share();
  for (size_t i = 0; i < inst.rec.regions.size(); ++i) {
    UniqueFd fd = DupFd(inst.region_fds[i].get());
    if (!fd.valid()) return Status::FromErrno("dup of region memfd", errno);
    job->targets.push_back({fd.get(), inst.rec.regions[i].size});
    job->fds.push_back(std::move(fd));
  }
  job->chain = inst.chain;
  job->generation = inst.rec.generation;
  job->epoch = epoch;
  job->first_slot = first_slot;
  job->parts = parts;
  job->write = options_.apply_write ? &options_.apply_write : nullptr;
  inst.applies_in_flight++;
  applier_->Post([this, job, id = inst.rec.spec.id, serial = inst.image_serial]() {
    auto result = std::make_shared<ApplyResult>(RunApply(*job));
    return
        [this, result, id, serial, epoch = job->epoch] { OnApplied(id, serial, epoch, *result); };
  });
  return Status::Ok();
}

void Agent::OnApplied(const std::string& id, uint64_t serial, uint64_t epoch, ApplyResult& result) {
  Instance* found = FindMutable(id);
  if (!found) return;
  Instance& inst = *found;
  inst.applies_in_flight--;
  inst.apply_retries += static_cast<uint64_t>(result.retries);
  if (serial == inst.image_serial) {
    if (result.status.ok()) {
      inst.apply_seconds += result.seconds;
      inst.apply_seconds_max = std::max(inst.apply_seconds_max, result.seconds);
      inst.epochs_applied++;
      inst.bytes_applied += result.bytes;
      inst.rec.epoch = epoch;
      inst.record = std::move(result.record);
      if (result.retries)
        spdlog::warn("instance {}: epoch {} applied after {} failed attempt(s)", id, epoch,
                     result.retries);
      inst.epochs.MarkApplied(epoch);
      if (inst.epochs.Advance()) SendProgress(inst);
    } else if (result.torn) {
      MarkTorn(inst, epoch, result.status);
    } else if (inst.epochs.Truncate(epoch); !result.skipped) {
      spdlog::error(
          "instance {}: epoch {} refused, the image stays at epoch {}: {}. The instance "
          "handed over a malformed staging slot (a libspare bug or memory corruption); "
          "if it repeats, `spare stop` and `spare run` it again",
          id, epoch, inst.rec.epoch, result.status.ToString());
      ipc::Message m = ipc::ErrorMessage(result.status);
      m.body["epoch"] = epoch;
      SendTo(inst.conn, std::move(m));
    }
  }
  if (inst.applies_in_flight == 0 && inst.copy) ContinueFullCopy(inst);  // quiescent now
  MaybeRelaunch(inst);
}

void Agent::SendProgress(Instance& inst) {
  auto send = [&](ipc::MsgType type, uint64_t epoch) {
    ipc::Message m;
    m.type = type;
    m.body = {{"epoch", epoch}};
    SendTo(inst.conn, std::move(m));
  };
  if (inst.epochs.released() > inst.sent_released) {
    inst.sent_released = inst.epochs.released();
    send(ipc::MsgType::kReleased, inst.sent_released);
  }
  if (inst.epochs.durable() > inst.sent_durable) {
    inst.sent_durable = inst.epochs.durable();
    send(ipc::MsgType::kDurable, inst.sent_durable);
  }
}

// The image is between two epochs: nothing may resume from it. The
// instance's outputs of `epoch` were never released (it is not durable), so
// failing it loses nothing a client saw; the standby (next issue) will
// recover such an instance instead.
void Agent::MarkTorn(Instance& inst, uint64_t epoch, const Status& why) {
  InstanceRecord& r = inst.rec;
  r.image_torn = true;
  r.state = InstanceState::kFailed;
  r.reason = why.message() + ": the committed image is torn (part epoch " + std::to_string(epoch) +
             ", part " + std::to_string(epoch - 1) +
             ") and nothing will resume from it; no output of epoch " + std::to_string(epoch) +
             " was released. Free memory (shmem/tmpfs) or fix the I/O error, then `spare stop " +
             r.spec.id + "` and `spare run` it afresh";
  spdlog::error("instance {}: failed: {}", r.spec.id, r.reason);
  ipc::Message m = ipc::ErrorMessage(Status(Code::kTornImage, r.reason));
  m.body["epoch"] = epoch;
  SendTo(inst.conn, std::move(m));
  inst.relaunch_pending = false;
  if (inst.pidfd.valid()) (void)SignalPidfd(inst.pidfd.get(), SIGKILL);
  AnswerRun(inst, Status(Code::kTornImage, r.reason));
  SaveStateOrLog();
}

}  // namespace spare::agent
