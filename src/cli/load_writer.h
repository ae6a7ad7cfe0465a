// cli/load_writer.h — `spare demo`'s load: one connection pipelining
// batches of SETs of fresh keys (`batch` at a time: written at once, then
// the replies read in order) as fast as spare-kv answers, recording every
// acknowledged one.
//
// A SET whose reply did not arrive (spare-kv killed mid-batch) is not
// acknowledged and never counted — the replies read before the break are;
// the writer reconnects and goes on. So Acked() is exactly what spare-kv
// promised to keep.
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
  explicit LoadWriter(int port, int batch = 1, std::string prefix = "load")
      : port_(port), batch_(batch < 1 ? 1 : batch), prefix_(std::move(prefix)),
        thread_([this] { Loop(); }) {}
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
  int batch_;
  std::string prefix_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> acked_;
  std::thread thread_;
};

}  // namespace spare::cli
