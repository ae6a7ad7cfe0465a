// cli/load_writer.h — `spare demo`'s load: one connection issuing SETs of
// fresh keys as fast as spare-kv answers, recording every acknowledged one.
//
// A SET whose reply did not arrive (spare-kv killed mid-request) is not
// acknowledged and never counted; the writer reconnects and goes on. So
// Acked() is exactly what spare-kv promised to keep.
//
// Threading: starts its own thread in the constructor; Stop() (or the
// destructor) joins it. Acked() may be called from any thread.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace spare::cli {

class LoadWriter {
 public:
  explicit LoadWriter(int port) : port_(port), thread_([this] { Loop(); }) {}
  ~LoadWriter() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Keys acknowledged so far (with their values).
  std::vector<std::pair<std::string, std::string>> Acked() {
    std::lock_guard lock(mu_);
    return acked_;
  }

 private:
  void Loop();

  int port_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> acked_;
  std::thread thread_;
};

}  // namespace spare::cli
