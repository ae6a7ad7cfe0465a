// common/worker.h — a thread that runs a daemon's slow work off its loop
// (the agent's applies and state writes, the standby's applies).
//
// The agent loop must answer every socket within a few ms (heartbeats with
// timeouts of tens of ms share it next), so work that can take longer —
// applying an epoch (pwrite of up to the whole staging ring), a config
// checkpoint's fsync, rewriting state.json — is posted to a Worker. A job
// runs on the worker's thread and returns a completion; completions run on
// the loop thread, in job order, when the loop calls RunCompletions()
// (notify_fd() is readable then; the agent watches it with epoll).
//
// Ownership contract (docs/ARCHITECTURE.md, "Processes and threads"):
//   - a job touches only what it captured by value: shared references to
//     the memory it reads (StagingArea::Share()), duplicated fds, copies of
//     bytes. It never touches the Agent, an Instance or a connection, and
//     it never blocks on the loop.
//   - a completion runs on the loop and may touch everything the loop owns;
//     it must look things up again (the instance may be gone or relaunched).
// Jobs run one at a time, in the order they were posted, so an instance's
// epochs are applied in order and state.json writes land in order.
//
// Thread-safety: Post(), RunCompletions(), Drain() from the loop thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/fd.h"
#include "spare/status.h"

namespace spare {

class Worker {
 public:
  using Completion = std::function<void()>;
  using Job = std::function<Completion()>;  // may return an empty Completion

  // Starts the thread (named `name`, at most 15 characters).
  static Result<std::unique_ptr<Worker>> Create(std::string name);
  // Runs the jobs still queued, then joins. Their completions are dropped.
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Post(Job job);
  // Readable while completions wait; RunCompletions() clears it.
  int notify_fd() const { return event_fd_.get(); }
  // Runs every completion that is ready. Returns how many ran.
  size_t RunCompletions();
  // Blocks until every posted job has run, then runs their completions.
  void Drain();
  // Jobs posted and not yet completed on the loop.
  size_t outstanding() const { return outstanding_; }

 private:
  Worker() = default;
  void Loop();

  UniqueFd event_fd_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;          // jobs queued, or stop
  std::condition_variable done_cv_;     // a job finished
  std::deque<Job> jobs_;                // guarded by mu_
  std::deque<Completion> completions_;  // guarded by mu_
  bool stop_ = false;                   // guarded by mu_
  size_t outstanding_ = 0;              // loop thread only
};

}  // namespace spare
