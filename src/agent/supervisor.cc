// Launching instances, noticing their end (pidfd), restarting them from
// the committed image after a crash, and stopping them.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <ctime>

#include "agent/agent.h"
#include "agent/hot_link.h"
#include "agent/restart_policy.h"

namespace spare::agent {
namespace {

constexpr auto kStopGrace = std::chrono::seconds(2);

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double SecondsSince(SteadyTime t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A line in the instance's log, so its output reads as a story.
void LogMarker(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!fd.valid()) return;
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  std::string line = std::string("--- spare agent ") + stamp + ": " + text + " ---\n";
  ssize_t ignored = ::write(fd.get(), line.data(), line.size());
  (void)ignored;
}

}  // namespace

Status Agent::EnsureStaging(Instance& inst) {
  const InstanceSpec& s = inst.rec.spec;
  const epoch::StagingView& v = inst.staging.view();
  if (inst.staging.valid() && v.slot_count == s.slot_count && v.slot_size == s.slot_size)
    return Status::Ok();
  SPARE_ASSIGN_OR_RETURN(inst.staging, StagingArea::Create(s.id, s.slot_count, s.slot_size));
  inst.ResetImageState();
  return Status::Ok();
}

Status Agent::Launch(Instance& inst) {
  InstanceRecord& r = inst.rec;
  uint64_t generation = r.generation + 1;
  LaunchRequest req;
  req.argv = r.spec.argv;
  req.env = r.spec.env;
  req.env.push_back("SPARE_AGENT=" + options_.dir);
  req.env.push_back("SPARE_INSTANCE=" + r.spec.id);
  req.env.push_back("SPARE_GENERATION=" + std::to_string(generation));
  req.cwd = r.spec.cwd;
  req.log_path = InstanceDir(r.spec.id) + "/log";
  LogMarker(req.log_path, "launching generation " + std::to_string(generation) + " from epoch " +
                              std::to_string(r.epoch));
  SPARE_ASSIGN_OR_RETURN(Launched launched, launcher_->Launch(req));
  r.generation = generation;
  r.pid = launched.pid;
  auto start = ProcStartTime(launched.pid);
  r.pid_start_time = start.ok() ? start.value() : 0;
  inst.pidfd = std::move(launched.pidfd);
  inst.is_child = launched.is_child;
  inst.launched_at = std::chrono::steady_clock::now();
  return WatchPidfd(inst);
}

Status Agent::WatchPidfd(Instance& inst) {
  auto token = AddWatch(inst.pidfd.get(), EPOLLIN, {WatchKind::kPidfd, -1, inst.rec.spec.id});
  if (!token.ok()) return token.status();
  inst.pidfd_watch = token.value();
  return Status::Ok();
}

void Agent::OnPidfdReadable(const std::string& id) {
  Instance* inst = FindMutable(id);
  if (!inst || !inst->pidfd.valid()) return;
  // Apply every Commit it sent before it died: those epochs were handed
  // over, and an Applied may already have released their outputs' peers.
  if (Conn* c = ConnOf(inst->conn)) ReadConn(c->fd.get(), SIZE_MAX);
  // A full copy in progress ends: its held epochs are applied before any
  // relaunch, as every epoch handed over is. The replica it was filling is
  // no epoch at all: the next generation reserves afresh and copies again.
  const bool copying = inst->copy != nullptr;
  EndFullCopy(*inst, /*done=*/false);
  if (copying) {
    inst->standby_handle = 0;
    inst->standby_key.reset();
  }
  ExitInfo exit = ReapPidfd(inst->pidfd.get(), inst->is_child);
  ForgetProcess(*inst);
  OnProcessGone(*inst, exit);
  if (options_.handle_signals) ReapOrphans();  // the sweep an instance's zombie stopped
}

void Agent::ForgetProcess(Instance& inst) {
  RemoveWatch(inst.pidfd_watch, inst.pidfd.get());
  inst.pidfd_watch = 0;
  inst.pidfd.reset();
  if (Conn* c = ConnOf(inst.conn)) {
    c->instance_id.clear();  // whoever still holds that socket is not the instance
    c->dead = true;
  }
  inst.conn = {};
}

void Agent::OnProcessGone(Instance& inst, const ExitInfo& exit) {
  inst.last_exit = exit.Describe();
  inst.exited_failing = exit.kind == ExitInfo::kExited && exit.value != 0;
  double ran = SecondsSince(inst.launched_at);
  int64_t pid = inst.rec.pid;
  inst.rec.pid = 0;
  if (inst.rec.state == InstanceState::kStopping) return FinishStop(inst, exit);
  if (inst.moving) {  // planned failover: not restarted here
    inst.rec.state = InstanceState::kStopping;
    inst.rec.reason = "moving to the spare host (" + inst.moving->reason + ")";
    ContinueMove(inst);
    SaveStateOrLog();
    return;
  }
  if (inst.rec.image_torn || inst.rec.fenced) {  // MarkTorn/OnFenced killed it; never resume
    spdlog::info("instance {}: pid {} ended ({}); {}, not restarted", inst.rec.spec.id, pid,
                 inst.last_exit,
                 inst.rec.fenced ? "it was fenced (failed over elsewhere)" : "its image is torn");
    SaveStateOrLog();
    return;
  }
  if (exit.clean()) {
    inst.rec.state = InstanceState::kExited;
    inst.rec.reason = "exited with status 0";
    spdlog::info("instance {}: pid {} exited with status 0 after {:.1f} s; not restarted",
                 inst.rec.spec.id, pid, ran);
    AnswerRun(inst, Status(Code::kFailedPrecondition, "instance " + inst.rec.spec.id +
                                                          " exited (status 0) before it "
                                                          "attached; see " +
                                                          InstanceDir(inst.rec.spec.id) + "/log"));
    SaveStateOrLog();
    return;
  }
  spdlog::warn("instance {}: pid {} (generation {}) crashed: {} after {:.3f} s, at epoch {}",
               inst.rec.spec.id, pid, inst.rec.generation, inst.last_exit, ran, inst.rec.epoch);
  bool can_relaunch = inst.image_held() || (inst.rec.regions.empty() && inst.rec.epoch == 0);
  OnCrash(inst, can_relaunch);
}

void Agent::OnCrash(Instance& inst, bool relaunch_possible) {
  InstanceRecord& r = inst.rec;
  const std::string& id = r.spec.id;
  inst.crash_detected_at = std::chrono::steady_clock::now();
  RestartPolicy policy(r.spec.max_restarts, r.spec.restart_window_ms);
  CrashDecision decision = policy.OnCrash(WallMs(), r.crash_times_ms);
  Status failed = Status::Ok();
  if (!relaunch_possible) {
    failed = Status(Code::kFailedPrecondition,
                    "died before it reattached to this agent; its committed image was lost "
                    "with it");
  } else if (!decision.restart) {
    failed = Status(Code::kFailedPrecondition, policy.FailureReason(decision, inst.last_exit));
  } else {
    inst.crashes_in_window = decision.crashes_in_window;
    r.state = InstanceState::kRestarting;
    const auto now = std::chrono::steady_clock::now();
    inst.fast_crashes =
        inst.exited_failing && now - inst.launched_at < kFastCrash ? inst.fast_crashes + 1 : 0;
    if (inst.fast_crashes >= 2) {
      const auto delay = std::chrono::milliseconds(
          std::min<int64_t>(int64_t{10} << std::min<uint32_t>(inst.fast_crashes - 2, 7), 1000));
      inst.relaunch_at = now + delay;
      spdlog::warn("instance {}: exited failing {} times in a row within {} ms of its launch: "
                   "the next launch waits {} ms",
                   id, inst.fast_crashes,
                   std::chrono::duration_cast<std::chrono::milliseconds>(kFastCrash).count(),
                   delay.count());
      inst.relaunch_pending = true;
      SaveStateOrLog();
      ArmTimer();
      return;
    }
    if (RelaunchMustWait(inst)) {
      // Epochs it handed over before dying are still being applied: the
      // replacement must map the image only once they are in it (its
      // resume point is the image's epoch). With hot, also until the
      // standby has acknowledged them, so the replica is not behind the
      // image the replacement starts from (that would take a full copy).
      inst.relaunch_pending = true;
      SaveStateOrLog();
      return;
    }
    return Relaunch(inst);
  }
  r.state = InstanceState::kFailed;
  r.reason = failed.message();
  inst.crash_detected_at.reset();
  spdlog::error("instance {}: failed: {}", id, r.reason);
  AnswerRun(inst, failed.With("instance " + id + " (see " + InstanceDir(id) + "/log)"));
  SaveStateOrLog();
}

bool Agent::RelaunchMustWait(const Instance& inst) const {
  if (inst.applies_in_flight > 0) return true;
  // Waiting for the standby makes sense only while it answers, and only for
  // epochs it was sent: after a full copy the crash cut short, they wait in
  // to_ship for a copy the next generation makes anyway.
  return inst.rec.spec.policy == "hot" && hot_ && hot_->welcomed && !hot_->suspected &&
         inst.standby_handle != 0 && !inst.copy && !inst.unacked.empty() &&
         inst.to_ship.empty();
}

void Agent::MaybeRelaunch(Instance& inst) {
  if (!inst.relaunch_pending || RelaunchMustWait(inst)) return;
  if (inst.relaunch_at && std::chrono::steady_clock::now() < *inst.relaunch_at) return;
  inst.relaunch_at.reset();
  inst.relaunch_pending = false;
  Relaunch(inst);
}

// Launches the next generation of a crashed instance from its image.
void Agent::Relaunch(Instance& inst) {
  InstanceRecord& r = inst.rec;
  const std::string& id = r.spec.id;
  if (r.state != InstanceState::kRestarting) return;  // stopped or failed meanwhile
  Status st = r.image_torn ? Status(Code::kTornImage, r.reason) : Launch(inst);
  if (st.ok()) {
    r.restarts++;
    r.state = InstanceState::kRestarting;
    spdlog::info(
        "instance {}: relaunched as pid {} generation {} from epoch {} (crash {} of "
        "{} allowed in the window)",
        id, r.pid, r.generation, r.epoch, inst.crashes_in_window, r.spec.max_restarts);
    SaveStateOrLog();
    return;
  }
  r.state = InstanceState::kFailed;
  r.reason = "restart failed: " + st.message();
  inst.crash_detected_at.reset();
  spdlog::error("instance {}: failed: {}", id, r.reason);
  AnswerRun(inst, Status(Code::kFailedPrecondition, r.reason)
                      .With("instance " + id + " (see " + InstanceDir(id) + "/log)"));
  SaveStateOrLog();
}

void Agent::OnAttached(Instance& inst) {
  InstanceRecord& r = inst.rec;
  InstanceState before = r.state;
  r.state = InstanceState::kRunning;
  r.reason.clear();
  if (inst.failover && !inst.failover->attach_ms) {
    Instance::Failover& f = *inst.failover;
    f.attach_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                            inst.launched_at)
                      .count();
    spdlog::warn(
        "instance {}: failed over from {}: detection {:.1f} ms (by {}), fencing {:.2f} ms, "
        "launch {:.1f} ms, first attach {:.1f} ms; pid {} generation {} resumed at epoch {}",
        r.spec.id, f.from, f.detection_ms, f.detected_by, f.fencing_ms, f.launch_ms, *f.attach_ms, r.pid,
        r.generation, r.epoch);
  } else if (inst.crash_detected_at) {
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                          *inst.crash_detected_at)
                    .count();
    inst.last_restart_ms = ms;
    inst.crash_detected_at.reset();
    spdlog::info(
        "instance {}: restarted in {:.2f} ms (crash to attach; pid {}, generation {}, "
        "resumed at epoch {})",
        r.spec.id, ms, r.pid, r.generation, r.epoch);
  } else if (before == InstanceState::kAdopting) {
    spdlog::info("instance {}: pid {} reattached at epoch {} with {} region(s)", r.spec.id, r.pid,
                 r.epoch, r.regions.size());
  } else if (before != InstanceState::kRunning) {
    spdlog::info(
        "instance {}: pid {} attached {:.1f} ms after launch (generation {}, epoch {}, "
        "tracker {})",
        r.spec.id, r.pid, SecondsSince(inst.launched_at) * 1000, r.generation, r.epoch,
        inst.tracker.empty() ? "?" : inst.tracker);
  }
  AnswerRun(inst, Status::Ok());
  if (before != InstanceState::kRunning) SaveStateOrLog();
  // Protected at once (a replica that lacks its epochs gets a full copy),
  // not only at its next commit.
  // (A fresh instance has no region yet; it reserves at its first commit.)
  if (hot_ && r.spec.policy == "hot" && !r.regions.empty()) ReserveOnStandby(inst);
}

void Agent::AnswerRun(Instance& inst, const Status& error) {
  ConnRef ref = std::exchange(inst.pending_run, ConnRef{});
  if (!ref.valid()) return;
  if (!error.ok()) return SendTo(ref, ipc::ErrorMessage(error));
  SendTo(ref, ipc::OkMessage({{"id", inst.rec.spec.id},
                              {"pid", inst.rec.pid},
                              {"generation", inst.rec.generation}}));
}

void Agent::AnswerStops(Instance& inst) {
  for (ConnRef ref : std::exchange(inst.stop_waiters, {})) {
    SendTo(ref, ipc::OkMessage(
                    {{"id", inst.rec.spec.id}, {"state", std::string(StateName(inst.rec.state))}}));
  }
}

Status Agent::StartStop(Instance& inst) {
  SPARE_RETURN_IF_ERROR(SignalPidfd(inst.pidfd.get(), SIGTERM));
  inst.rec.state = InstanceState::kStopping;
  inst.stop_started_at = std::chrono::steady_clock::now();
  inst.kill_at = inst.stop_started_at + kStopGrace;
  inst.crash_detected_at.reset();
  ArmTimer();
  spdlog::info("instance {}: SIGTERM sent to pid {} (SIGKILL in 2 s if still running)",
               inst.rec.spec.id, inst.rec.pid);
  SaveStateOrLog();
  return Status::Ok();
}

void Agent::KillOverdue() {
  auto now = std::chrono::steady_clock::now();
  for (auto& [id, inst] : instances_) {
    if (!inst->kill_at || *inst->kill_at > now) continue;
    inst->kill_at.reset();
    if (!inst->pidfd.valid()) continue;
    spdlog::warn("instance {}: pid {} still running 2 s after SIGTERM; sending SIGKILL", id,
                 inst->rec.pid);
    Status st = SignalPidfd(inst->pidfd.get(), SIGKILL);
    if (!st.ok()) spdlog::error("instance {}: {}", id, st.ToString());
  }
}

void Agent::FinishStop(Instance& inst, const ExitInfo& exit) {
  double took_ms = SecondsSince(inst.stop_started_at) * 1000;
  inst.kill_at.reset();
  ArmTimer();
  inst.rec.state = InstanceState::kStopped;
  inst.rec.reason = "stopped by `spare stop`";
  if (exit.kind != ExitInfo::kUnknown) inst.rec.reason += " (" + exit.Describe() + ")";
  ReleaseImage(inst);
  spdlog::info("instance {}: stopped in {:.1f} ms ({}); committed image released", inst.rec.spec.id,
               took_ms, exit.Describe());
  AnswerRun(inst, Status(Code::kFailedPrecondition,
                         "instance " + inst.rec.spec.id + " was stopped before it attached"));
  AnswerStops(inst);
  SaveStateOrLog();
}

}  // namespace spare::agent
