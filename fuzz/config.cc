// fuzz_config: the configuration files an operator writes. The first input
// byte picks the reader:
//   0: agent.toml (spare agent --config; toml++ then every key's check);
//   1: spare-kv's redis-style config file (kv::ParseConfig);
//   2: spare-kv's config blob as kept in its committed image (DecodeConfig).
// Each refuses with a Status naming what is wrong or accepts; spare-kv's
// accepted configs must survive its own encoding unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/options.h"
#include "config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: {
      spare::agent::AgentOptions o;
      (void)spare::agent::ParseAgentConfig(text, "agent.toml", &o);
      break;
    }
    case 1: {
      auto c = kv::ParseConfig(text, "kv.conf");
      if (!c.ok()) break;
      const std::string blob = kv::EncodeConfig(*c);
      auto back = kv::DecodeConfig(blob);
      if (!back.ok() || kv::EncodeConfig(*back) != blob) std::abort();
      break;
    }
    default: {
      auto c = kv::DecodeConfig(text);
      if (!c.ok()) break;
      const std::string blob = kv::EncodeConfig(*c);
      auto back = kv::DecodeConfig(blob);
      if (!back.ok() || kv::EncodeConfig(*back) != blob) std::abort();
      break;
    }
  }
  return 0;
}
