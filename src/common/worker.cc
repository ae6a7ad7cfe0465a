#include "common/worker.h"

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace spare {

Result<std::unique_ptr<Worker>> Worker::Create(std::string name) {
  std::unique_ptr<Worker> w(new Worker());
  w->event_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!w->event_fd_.valid()) return Status::FromErrno("eventfd for worker " + name, errno);
  // The thread starts with every signal blocked: the agent takes SIGTERM,
  // SIGINT and SIGCHLD through a signalfd on its loop thread, and a
  // process-directed signal goes to any thread that does not block it.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    w->thread_ = std::thread([raw = w.get(), name] {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      raw->Loop();
    });
  } catch (const std::system_error& e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return Status(Code::kResourceExhausted, "cannot start worker thread " + name + ": " + e.what());
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return w;
}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Worker::Post(Job job) {
  {
    std::lock_guard<std::mutex> l(mu_);
    jobs_.push_back(std::move(job));
  }
  ++outstanding_;
  cv_.notify_one();
}

void Worker::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stop_, and nothing left to run
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    l.unlock();
    Completion done = job();
    l.lock();
    completions_.push_back(std::move(done));
    const uint64_t one = 1;
    ssize_t n = ::write(event_fd_.get(), &one, sizeof(one));
    (void)n;  // only fails when the counter would overflow: it is readable then
    done_cv_.notify_all();
  }
}

size_t Worker::RunCompletions() {
  uint64_t ignored;
  ssize_t n = ::read(event_fd_.get(), &ignored, sizeof(ignored));
  (void)n;
  std::deque<Completion> ready;
  {
    std::lock_guard<std::mutex> l(mu_);
    ready.swap(completions_);
  }
  for (Completion& c : ready) {
    --outstanding_;
    if (c) c();
  }
  return ready.size();
}

void Worker::Drain() {
  while (outstanding_ > 0) {
    {
      std::unique_lock<std::mutex> l(mu_);
      done_cv_.wait(l, [&] { return !completions_.empty(); });
    }
    RunCompletions();
  }
}

}  // namespace spare
