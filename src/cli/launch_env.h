// cli/launch_env.h — the environment `spare run` hands the agent for an
// instance.
//
// Not the caller's whole environment: it is stored in the launch spec and
// in DIR/state.json and reused on every restart, so tokens and keys the
// caller happens to hold must not end up there. What goes:
//   - the caller's PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*,
//     TZ, TMPDIR and SPARE_* (SPARE_TRACKER, ...; the agent sets
//     SPARE_AGENT, SPARE_INSTANCE and SPARE_GENERATION itself);
//   - each --env-inherit NAME: the caller's NAME (an error if unset);
//   - each --env NAME=VALUE, overriding all of the above.
// Entries JSON cannot carry (not UTF-8) are left out with a warning.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace spare::cli {

// True for the names passed without being asked for (the list above).
bool InheritedByDefault(std::string_view name);

// The environment to send, as a JSON object of strings. `caller` is an
// environ-style array ("K=V", nullptr-terminated). kInvalidArgument names
// a bad --env (no '=', empty name) or an --env-inherit of an unset name.
Result<nlohmann::json> LaunchEnvironment(const char* const* caller,
                                         const std::vector<std::string>& set,
                                         const std::vector<std::string>& inherit);

}  // namespace spare::cli
