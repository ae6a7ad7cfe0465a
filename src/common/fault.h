// common/fault.h — test-only fault points on the real path.
//
// SPARE_FAULT=POINT:N (in a process's environment) makes the process
// SIGKILL itself the Nth time it reaches POINT. They are for moments a
// kill from outside cannot hit on purpose (tests/test_kill_campaign.py):
//   agent-before-commit   an epoch's puts are flushed to the standby, its
//                         COMMIT not yet sent (agent/hot_link.cc)
//   standby-mid-apply     a write into a replica is done, the rest of its
//                         epoch not (standby/standby.cc)
// Unset (production): Armed() is false and At() costs one branch.
#pragma once

#include <string_view>

namespace spare::fault {

// True when SPARE_FAULT names `point`.
bool Armed(std::string_view point);
// Counts a pass through `point`; SIGKILLs the process on the Nth.
void At(std::string_view point);

}  // namespace spare::fault
