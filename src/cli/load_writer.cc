#include "cli/load_writer.h"

#include <chrono>
#include <optional>
#include <random>

#include "cli/resp_client.h"

namespace spare::cli {

void LoadWriter::Loop() {
  std::mt19937_64 rng(std::random_device{}());
  std::optional<RespClient> conn;
  for (uint64_t n = 0; !stop_; ++n) {
    if (!conn) {
      auto c = RespClient::Connect(port_);
      if (!c.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      conn.emplace(std::move(*c));
    }
    std::string key = "load:" + std::to_string(n);
    std::string value = "v" + std::to_string(n) + "-" + std::to_string(rng() % 1000000);
    auto reply = conn->Call({"SET", key, value});
    if (!reply.ok()) {
      conn.reset();  // killed mid-request: unacknowledged, never counted
      continue;
    }
    if (reply->size() == 1 && (*reply)[0] == "OK") {
      std::lock_guard lock(mu_);
      acked_.emplace_back(std::move(key), std::move(value));
    }
  }
}

}  // namespace spare::cli
