// agent/checks.h — the checks a launch spec and a region table must pass,
// shared by the Run and Region handlers, `spare run` and state.json load,
// so a value refused at one door is refused at every door with the same
// words. Each returns kInvalidArgument (kUnsupported for a policy that is
// not implemented yet) naming the value and what is wrong with it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "agent/state.h"
#include "spare/status.h"

namespace spare::agent {

// Lowest address past user space on x86-64 with 4-level page tables.
inline constexpr uint64_t kUserSpaceEnd = 0x7fff'ffff'f000ULL;
inline constexpr size_t kMaxIdLength = 64;
inline constexpr size_t kMaxRegionName = 64;

// Ids name directories (DIR/instances/ID) and feed address derivation:
// 1 to 64 letters, digits, '-', '_', '.', not starting with '.' or '-'
// (so never "", ".", "..", a path or a control character).
Status CheckInstanceId(std::string_view id);
// "local"; "hot" and "cold" are kUnsupported (not implemented yet).
Status CheckPolicy(std::string_view policy);
// 1 to 64 bytes.
Status CheckRegionName(std::string_view name);
// A region of `size` bytes (page rounded, non-zero) at `address`: page
// aligned, non-zero, inside user space, overlapping none of `others`.
// An overlap is kResourceExhausted when the address was derived (not
// asked for), so the caller can suggest an explicit one.
Status CheckRegionPlacement(std::string_view name, uint64_t address, uint64_t size,
                            std::span<const RegionRecord> others, bool derived = false);

}  // namespace spare::agent
