#include "agent/instance.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>

#include "region/mapping.h"

namespace spare::agent {

StagingArea& StagingArea::operator=(StagingArea&& o) noexcept {
  if (this != &o) {
    Reset();
    fd_ = std::move(o.fd_);
    view_ = o.view_;
    o.view_ = {};
  }
  return *this;
}

void StagingArea::Reset() {
  if (view_.base) ::munmap(view_.base, view_.size);
  view_ = {};
  fd_.reset();
}

Result<StagingArea> StagingArea::Create(const std::string& id, uint32_t slot_count,
                                        uint64_t slot_size) {
  size_t bytes = epoch::StagingBytes(slot_count, slot_size);
  SPARE_ASSIGN_OR_RETURN(UniqueFd fd, region::CreateMemfd("spare-staging-" + id, bytes));
  SPARE_ASSIGN_OR_RETURN(void* base, region::MapShared(fd.get(), bytes, /*writable=*/true));
  StagingArea area;
  area.fd_ = std::move(fd);
  area.view_.base = static_cast<std::byte*>(base);
  area.view_.size = bytes;
  area.view_.slot_count = slot_count;
  area.view_.slot_size = slot_size;
  epoch::InitStaging(area.view_);
  return area;
}

Result<StagingArea> StagingArea::Adopt(UniqueFd fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat staging fd", errno);
  if (st.st_size < static_cast<off_t>(epoch::kSlotBase))
    return Status(Code::kInvalidArgument, "staging fd of " + std::to_string(st.st_size) +
                                              " bytes is smaller than its header");
  size_t bytes = static_cast<size_t>(st.st_size);
  SPARE_ASSIGN_OR_RETURN(void* base, region::MapShared(fd.get(), bytes, /*writable=*/true));
  auto view = epoch::OpenStaging(static_cast<std::byte*>(base), bytes);
  if (!view.ok()) {
    ::munmap(base, bytes);
    return view.status().With("staging area handed back on reattach");
  }
  StagingArea area;
  area.fd_ = std::move(fd);
  area.view_ = view.value();
  return area;
}

void Instance::ReleaseImage() {
  staging.Reset();
  region_fds.clear();
  rec.regions.clear();
  rec.epoch = 0;
  record.clear();
}

}  // namespace spare::agent
