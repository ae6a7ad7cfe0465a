#include "region/mapping.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/check.h"
#include "common/hex.h"

namespace spare::region {
namespace {

constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

constexpr uint64_t kSlotSize = 1ULL << 30;  // regions start on 1 GiB boundaries

// "[0x100000000000, 0x100040000000) (1073741824 bytes)"
std::string DescribeRange(uint64_t address, size_t size) {
  return "[" + Hex(address) + ", " + Hex(address + size) + ") (" + std::to_string(size) + " bytes)";
}

Status CheckFixedArgs(uint64_t address, size_t size) {
  if (address % kPageSize != 0 || size == 0) {
    return Status(Code::kInvalidArgument, "fixed mapping at " + Hex(address) + " of " +
                                              std::to_string(size) +
                                              " bytes: address must be page aligned and "
                                              "size non-zero");
  }
  return Status::Ok();
}

// mmap at exactly `address` without replacing anything. Kernels before 4.17
// ignore MAP_FIXED_NOREPLACE and treat the address as a hint, so a different
// result is also "taken".
Result<void*> MapFixed(uint64_t address, size_t size, int flags, int fd, const char* what) {
  SPARE_RETURN_IF_ERROR(CheckFixedArgs(address, size));
  size_t len = RoundUpToPage(size);
  void* want = reinterpret_cast<void*>(address);
  void* got = ::mmap(want, len, PROT_READ | PROT_WRITE, flags | MAP_FIXED_NOREPLACE, fd, 0);
  if (got == MAP_FAILED) {
    int err = errno;
    if (err == EEXIST) {
      return Status(Code::kResourceExhausted,
                    std::string(what) + " at " + DescribeRange(address, len) +
                        ": address range already in use by another mapping");
    }
    return Status::FromErrno(std::string(what) + " at " + DescribeRange(address, len), err);
  }
  if (got != want) {
    ::munmap(got, len);
    return Status(Code::kResourceExhausted,
                  std::string(what) + " at " + DescribeRange(address, len) +
                      ": kernel placed it elsewhere (range in use, or no MAP_FIXED_NOREPLACE)");
  }
  return got;
}

}  // namespace

size_t RoundUpToPage(size_t n) { return (n + kPageSize - 1) & ~(kPageSize - 1); }

uint64_t DeriveAddress(std::string_view instance_id, std::string_view region, size_t size) {
  constexpr uint64_t kSlots = kVaSpan / kSlotSize;
  SPARE_CHECK(size <= kVaSpan);
  // Slots the region covers; an empty region still gets a slot.
  const uint64_t need = std::max<uint64_t>(1, (size + kSlotSize - 1) / kSlotSize);
  // The separator keeps ("ab", "c") and ("a", "bc") apart. XXH64 with a fixed
  // seed is specified byte-for-byte, so the address is the same on every
  // host and build.
  std::string key;
  key.reserve(instance_id.size() + 1 + region.size());
  key.append(instance_id).push_back('\0');
  key.append(region);
  const uint64_t hash = XXH64(key.data(), key.size(), /*seed=*/0);
  // Any slot from which `need` slots still fit below the end of the span.
  const uint64_t slot = hash % (kSlots - need + 1);
  return kVaBase + slot * kSlotSize;
}

Result<UniqueFd> CreateMemfd(std::string_view name, size_t size) {
  std::string n(name);
  UniqueFd fd(::memfd_create(n.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return Status::FromErrno("memfd_create(\"" + n + "\")", errno);
  const size_t len = RoundUpToPage(size);
  if (::ftruncate(fd.get(), static_cast<off_t>(len)) != 0) {
    return Status::FromErrno("ftruncate memfd \"" + n + "\" to " + std::to_string(len) + " bytes",
                             errno);
  }
  // Its size is part of the region's geometry: nobody holding a dup (the
  // instance, a bug) may shrink it under a mapping (SIGBUS) or grow it, and
  // F_SEAL_SEAL keeps anyone from adding F_SEAL_WRITE, which would make
  // the agent's applies fail.
  if (::fcntl(fd.get(), F_ADD_SEALS, kSeals) != 0)
    return Status::FromErrno("sealing memfd \"" + n + "\"", errno);
  return fd;
}

Status CheckSealed(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0)
    return Status(Code::kFailedPrecondition,
                  std::string("fd is not a sealable memfd (F_GET_SEALS: ") + std::strerror(errno) +
                      "); only memfds made by the agent are accepted");
  if ((seals & kSeals) != kSeals)
    return Status(Code::kFailedPrecondition,
                  "memfd is not sealed against shrinking, growing and resealing (seals " +
                      std::to_string(seals) + ", need " + std::to_string(kSeals) +
                      "); only memfds made by the agent are accepted");
  return Status::Ok();
}

Result<void*> MapPrivateFixed(int fd, uint64_t address, size_t size) {
  return MapFixed(address, size, MAP_PRIVATE, fd, "MAP_PRIVATE mapping of memfd");
}

Result<void*> MapAnonymousFixed(uint64_t address, size_t size) {
  return MapFixed(address, size, MAP_PRIVATE | MAP_ANONYMOUS, -1, "anonymous mapping");
}

Result<void*> MapShared(int fd, size_t size, bool writable) {
  const size_t len = RoundUpToPage(size);
  const int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return Status::FromErrno("MAP_SHARED mapping of fd " + std::to_string(fd) + " (" +
                                 std::to_string(len) + " bytes" +
                                 (writable ? ", writable)" : ", read-only)"),
                             errno);
  }
  return p;
}

}  // namespace spare::region
