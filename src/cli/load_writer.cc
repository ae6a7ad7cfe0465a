#include "cli/load_writer.h"

#include <chrono>
#include <optional>
#include <random>

#include "cli/resp_client.h"

namespace spare::cli {

void LoadWriter::Loop() {
  std::mt19937_64 rng(std::random_device{}());
  std::optional<RespClient> conn;
  uint64_t n = 0;
  while (!stop_) {
    if (!conn) {
      auto c = RespClient::Connect(port_);
      if (!c.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      conn.emplace(std::move(*c));
    }
    std::vector<std::vector<std::string>> batch;
    std::vector<std::pair<std::string, std::string>> kv;
    for (int i = 0; i < batch_; ++i, ++n) {
      kv.emplace_back(prefix_ + ":" + std::to_string(n),
                      "v" + std::to_string(n) + "-" + std::to_string(rng() % 1000000));
      batch.push_back({"SET", kv.back().first, kv.back().second});
    }
    if (!conn->Send(batch).ok()) {
      conn.reset();  // killed: nothing of this batch is acknowledged
      continue;
    }
    for (auto& [key, value] : kv) {
      auto reply = conn->Read();
      if (!reply.ok()) {
        conn.reset();  // killed mid-batch: the rest is unacknowledged, never counted
        break;
      }
      if (reply->size() == 1 && (*reply)[0] == "OK") {
        std::lock_guard lock(mu_);
        acked_.emplace_back(std::move(key), std::move(value));
      }
    }
  }
}

}  // namespace spare::cli
