// Dropping private copies while the program is idle (issue 7).
//
// commit() drops a few MiB of long-clean private copies per call
// (commit.cc, DropCleanCopies). A program that stops committing after a
// large write would keep every copy until it exits, and the kernel frees
// them on the exit path: the first kill -9 after a 4 GiB fill took
// 200-400 ms. So a timerfd in epfd_ (what fd() returns) wakes the app's
// loop when the reclaimer has, or will have at its next generation swap,
// pages to drop; poll() then drops up to an idle budget and re-arms the
// timer at once while more is left.
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "region/mapping.h"
#include "runtime/runtime_impl.h"

namespace spare {
namespace {

// The clock of commit.cc's NowNs() (the reclaimer's time) and of the timer.
uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

}  // namespace

Status RuntimeImpl::AddDropTimer() {
  drop_timer_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!drop_timer_.valid()) return Status::FromErrno("timerfd_create (drop timer)", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = drop_timer_.get();
  if (epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, drop_timer_.get(), &ev) != 0)
    return Status::FromErrno("epoll_ctl (drop timer)", errno);
  return Status::Ok();
}

// Runs at the end of every poll(), whose contract is commit()'s: called
// from the committing thread where nothing else writes the regions. Pages
// the program wrote since the last commit may not have been collected yet;
// dropping one of those would lose its write (it would read the image's
// older bytes again). So, exactly as commit() does, collect first: the
// pages go to carry_ (the next commit ships them) and Reclaimer::Written()
// takes them out of the droppable list, as young pages. The collection is
// only paid when something is droppable.
Status RuntimeImpl::DropWhileIdle() {
  const uint64_t t0 = MonotonicNs();
  if (drop_timer_at_ != 0 && t0 >= drop_timer_at_) {
    uint64_t ticks;
    (void)!::read(drop_timer_.get(), &ticks, sizeof ticks);  // clears its readiness
    drop_timer_at_ = 0;
  }
  reclaimer_.Advance(durable_, t0);  // time moves the generations even without commits
  if (reclaimer_.has_droppable()) {
    // collect_ns_total is commit()'s breakdown; this pass counts in idle_drop_ns_total.
    const uint64_t commit_collect_ns = stats_.collect_ns_total;
    SPARE_RETURN_IF_ERROR(Collect());
    stats_.collect_ns_total = commit_collect_ns;
    drops_.clear();
    reclaimer_.Take(durable_, t0, &drops_, Reclaimer::Budget::kIdle);
    for (const PageSpan& s : drops_) {
      if (::madvise(regions_[s.region].region->bytes() + s.offset, s.length, MADV_DONTNEED) == 0) {
        stats_.pages_dropped += s.length / region::kPageSize;
        stats_.pages_dropped_idle += s.length / region::kPageSize;
      } else {
        stats_.drop_errors++;  // the copy stays: memory, not data
      }
    }
    const uint64_t dt = MonotonicNs() - t0;
    stats_.idle_drop_passes++;
    stats_.idle_drop_ns_total += dt;
    stats_.idle_drop_ns_max = std::max(stats_.idle_drop_ns_max, dt);
  }
  uint64_t at = reclaimer_.NextWakeNs(MonotonicNs());
  if (at == UINT64_MAX) at = 0;  // disarmed: the next Durable brings poll() back
  if (at != drop_timer_at_) {
    itimerspec its{};  // absolute; a time already past fires at once
    its.it_value.tv_sec = static_cast<time_t>(at / 1'000'000'000);
    its.it_value.tv_nsec = static_cast<long>(at % 1'000'000'000);
    if (timerfd_settime(drop_timer_.get(), TFD_TIMER_ABSTIME, &its, nullptr) != 0)
      return Status::FromErrno("timerfd_settime (drop timer)", errno);
    drop_timer_at_ = at;
  }
  return Status::Ok();
}

}  // namespace spare
