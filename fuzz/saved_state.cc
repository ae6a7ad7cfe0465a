// fuzz_saved_state: the daemons' saved state, as a restarted agent or
// standby reads it from disk (a file anyone with access to the directory
// may have edited, or a crash may have cut short). The first input byte
// picks the reader:
//   even: DIR/state.json (agent: the instances it adopts on start);
//   odd:  DIR/standby.json (standby: the owners it fenced).
// Either refuses with a Status or accepts; what it accepts it must write
// back identically (encode, decode, encode gives the same bytes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>

#include "agent/state.h"
#include "standby/standby.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return 0;
    auto state = spare::agent::StateFromJson(json);
    if (!state.ok()) return 0;
    const std::string once = spare::agent::EncodeState(*state);
    auto again = spare::agent::StateFromJson(nlohmann::json::parse(once));
    if (!again.ok() || spare::agent::EncodeState(*again) != once) std::abort();
    return 0;
  }
  auto tombs = spare::standby::DecodeStandbyState(text, "standby.json");
  if (!tombs.ok()) return 0;
  const std::string once = spare::standby::EncodeStandbyState("fuzz", *tombs);
  auto again = spare::standby::DecodeStandbyState(once, "standby.json");
  if (!again.ok() || *again != *tombs) std::abort();
  return 0;
}
