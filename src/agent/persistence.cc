// DIR/state.json: saving the agent's state value, and rebuilding live
// instances from it when an agent starts.
#include <signal.h>
#include <spdlog/spdlog.h>

#include "agent/agent.h"

namespace spare::agent {

// Encodes the state here (cheap: launch specs and region tables) and
// writes it on the io worker: the rename can take milliseconds on a loaded
// disk, and this runs on every lifecycle change, the restart path included.
// Writes land in the order they were asked for (one worker, FIFO).
void Agent::SaveStateOrLog() {
  AgentStateValue value;
  for (const auto& [id, inst] : instances_) value.instances.push_back(inst->rec);
  auto write = [path = options_.dir + "/state.json", text = EncodeState(value)]() {
    Status st = WriteState(path, text);
    if (!st.ok())
      spdlog::error(
          "cannot save {}: {} (a restarted agent would not know the latest lifecycle changes)",
          path, st.ToString());
    return Worker::Completion();
  };
  if (io_) {
    io_->Post(std::move(write));
  } else {
    write();  // before the workers exist (Create) or after they are gone
  }
}

Status Agent::LoadAndAdopt() {
  auto loaded = LoadState(options_.dir + "/state.json");
  if (!loaded.ok()) return loaded.status().With("refusing to start");
  if (!loaded.value()) return Status::Ok();
  for (InstanceRecord& rec : loaded.value()->instances) AdoptRecord(std::move(rec));
  SaveStateOrLog();
  return Status::Ok();
}

// One instance of the previous agent. Its committed image lived in that
// agent, so it survives only through a live instance that hands it back.
void Agent::AdoptRecord(InstanceRecord rec) {
  auto inst = std::make_unique<Instance>();
  inst->rec = std::move(rec);
  InstanceRecord& r = inst->rec;
  const std::string id = r.spec.id;
  if (IsLive(r.state)) {
    bool alive = false;
    if (r.pid > 0) {
      auto pidfd = OpenPidfdIfStartedAt(static_cast<pid_t>(r.pid), r.pid_start_time);
      if (pidfd.ok()) {
        inst->pidfd = std::move(pidfd).value();
        alive = true;
      } else {
        spdlog::info("instance {}: not adopting: {}", id, pidfd.status().message());
      }
    }
    if (alive && WatchPidfd(*inst).ok()) {
      inst->is_child = false;
      inst->launched_at = std::chrono::steady_clock::now();
      if (r.state == InstanceState::kStopping) {
        (void)SignalPidfd(inst->pidfd.get(), SIGKILL);  // a stop the last agent did not finish
      } else {
        r.state = InstanceState::kAdopting;
      }
      spdlog::info(
          "instance {}: pid {} (generation {}) is alive; adopting it, waiting for its "
          "reattach",
          id, r.pid, r.generation);
    } else {
      inst->pidfd.reset();
      r.state = InstanceState::kFailed;
      r.reason = "died while the agent was down; its committed image was lost with it";
      r.pid = 0;
      spdlog::warn("instance {}: {}", id, r.reason);
    }
  }
  if (!inst->pidfd.valid()) {
    // Nothing holds its image any more: a later `spare run` starts fresh.
    r.regions.clear();
    r.epoch = 0;
  }
  instances_.emplace(id, std::move(inst));
}

}  // namespace spare::agent
