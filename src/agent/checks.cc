#include "agent/checks.h"

#include <cctype>

#include "common/hex.h"
#include "region/mapping.h"

namespace spare::agent {

Status CheckInstanceId(std::string_view id) {
  std::string shown(id.substr(0, 80));
  if (id.empty() || id.size() > kMaxIdLength || id[0] == '.' || id[0] == '-')
    return Status(Code::kInvalidArgument, "instance id \"" + shown + "\" must be 1 to " +
                                              std::to_string(kMaxIdLength) +
                                              " characters, not starting with '.' or '-'");
  for (char c : id)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return Status(Code::kInvalidArgument,
                    "instance id \"" + shown + "\" may only hold letters, digits, '-', '_', '.'");
  return Status::Ok();
}

Status CheckPolicy(std::string_view policy) {
  std::string p(policy);
  if (p == "local" || p == "hot") return Status::Ok();
  if (p == "cold")
    return Status(Code::kUnsupported, "policy cold is not implemented yet; choose local or hot");
  return Status(Code::kInvalidArgument, "unknown policy \"" + p + "\" (choose local or hot)");
}

Status CheckRegionName(std::string_view name) {
  if (name.empty() || name.size() > kMaxRegionName)
    return Status(Code::kInvalidArgument, "region name \"" + std::string(name.substr(0, 80)) +
                                              "\" must be 1 to " + std::to_string(kMaxRegionName) +
                                              " bytes");
  return Status::Ok();
}

Status CheckRegionPlacement(std::string_view name, uint64_t address, uint64_t size,
                            std::span<const RegionRecord> others, bool derived) {
  const std::string n(name);
  if (size == 0 || size % region::kPageSize != 0 || size > region::kVaSpan)
    return Status(Code::kInvalidArgument, "region " + n + ": size " + std::to_string(size) +
                                              " must be a non-zero multiple of the page size, "
                                              "at most " +
                                              std::to_string(region::kVaSpan) + " bytes");
  if (address % region::kPageSize != 0 || address == 0 || address > kUserSpaceEnd - size)
    return Status(Code::kInvalidArgument,
                  "region " + n + ": address " + Hex(address) +
                      " must be page aligned and leave the region inside user space");
  for (const RegionRecord& r : others)
    if (address < r.address + r.size && r.address < address + size)
      return Status(derived ? Code::kResourceExhausted : Code::kInvalidArgument,
                    "region " + n + " at " + Hex(address) + " (" + std::to_string(size) +
                        " bytes) overlaps region " + r.name + " at " + Hex(r.address) +
                        (derived ? "; pass an explicit address for one of them" : ""));
  return Status::Ok();
}

}  // namespace spare::agent
