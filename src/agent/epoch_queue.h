// agent/epoch_queue.h — one instance's epochs between Commit and Durable.
//
// Two facts reach the instance about each epoch, at different times
// (DESIGN §2, docs/ARCHITECTURE.md "Epoch lifecycle"):
//   Released(N): the agent has everything it needs from the slots of every
//     epoch <= N (applied locally; with `hot`, also applied by the standby:
//     its staging slots mirror the agent's, so the next put into a slot
//     must wait until the standby has read the last one), so the instance
//     may reuse them;
//   Durable(N): every epoch <= N is durable (applied locally; with `hot`,
//     also acknowledged by the standby), so outputs up to N may leave.
// Facts about single epochs arrive out of order (a local apply and a
// standby's acknowledgement race); the queue turns them into the two
// monotonic numbers, always released >= durable, so answers go out in
// order without the agent loop waiting for any of them.
//
// Threading: the agent's loop thread only. A plain value; no I/O.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>

namespace spare::agent {

class EpochQueue {
 public:
  // Everything up to `epoch` is in the image and durable (launch, attach).
  void Reset(uint64_t epoch) {
    q_.clear();
    released_ = durable_ = last_ = epoch;
  }
  // A Commit of epoch last()+1 was accepted. `needs_ack`: the epoch is
  // durable only once a standby acknowledged it (policy hot).
  void Push(uint64_t epoch, bool needs_ack) {
    q_.push_back({epoch, false, !needs_ack});
    last_ = epoch;
  }
  void MarkApplied(uint64_t epoch) { Mark(epoch, &Entry::applied); }
  // `epoch` and every later one were not applied (refused): forget them, so
  // the instance may send `epoch` again.
  void Truncate(uint64_t epoch) {
    while (!q_.empty() && q_.back().epoch >= epoch) q_.pop_back();
    if (epoch > 0 && last_ >= epoch) last_ = epoch - 1;
  }
  void MarkAcked(uint64_t epoch) { Mark(epoch, &Entry::acked); }

  // Advances released/durable over the oldest epochs whose facts are in.
  // True when either moved: send the instance the new numbers.
  bool Advance() {
    uint64_t r = released_, d = durable_;
    for (const Entry& e : q_) {
      if (!e.applied || !e.acked) break;
      r = e.epoch;
    }
    while (!q_.empty() && q_.front().applied && q_.front().acked) {
      d = q_.front().epoch;
      q_.pop_front();
    }
    const bool moved = r > released_ || d > durable_;
    released_ = std::max(released_, r);
    durable_ = std::max(durable_, d);
    return moved;
  }

  uint64_t released() const { return released_; }
  uint64_t durable() const { return durable_; }
  uint64_t last() const { return last_; }  // newest epoch accepted
  size_t in_flight() const { return q_.size(); }

 private:
  struct Entry {
    uint64_t epoch;
    bool applied;
    bool acked;
  };
  void Mark(uint64_t epoch, bool Entry::*field) {
    for (Entry& e : q_)
      if (e.epoch == epoch) e.*field = true;
  }
  std::deque<Entry> q_;
  uint64_t released_ = 0, durable_ = 0, last_ = 0;
};

}  // namespace spare::agent
