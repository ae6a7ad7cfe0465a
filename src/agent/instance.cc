#include "agent/instance.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>

#include "region/mapping.h"

namespace spare::agent {

const epoch::StagingView StagingArea::kNoView{};

StagingArea::Mapping::~Mapping() {
  if (view.base) ::munmap(view.base, view.size);
}

Result<StagingArea> StagingArea::Create(const std::string& id, uint32_t slot_count,
                                        uint64_t slot_size) {
  size_t bytes = epoch::StagingBytes(slot_count, slot_size);
  SPARE_ASSIGN_OR_RETURN(UniqueFd fd, region::CreateMemfd("spare-staging-" + id, bytes));
  SPARE_ASSIGN_OR_RETURN(void* base, region::MapShared(fd.get(), bytes, /*writable=*/true));
  StagingArea area;
  area.m_ = std::make_shared<Mapping>();
  area.m_->fd = std::move(fd);
  area.m_->view = {static_cast<std::byte*>(base), bytes, slot_count, slot_size};
  epoch::InitStaging(area.m_->view);
  return area;
}

Result<StagingArea> StagingArea::Adopt(UniqueFd fd) {
  SPARE_RETURN_IF_ERROR(region::CheckSealed(fd.get()).With("staging area handed back on reattach"));
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
  area.m_ = std::make_shared<Mapping>();
  area.m_->fd = std::move(fd);
  area.m_->view = view.value();
  return area;
}

void Instance::ResetImageState() {
  ++image_serial;
  auto next = std::make_shared<ApplyChain>();
  next->epoch = rec.epoch;
  if (chain) next->maps = std::exchange(chain->maps, {});  // no apply in flight: ours to move
  chain = std::move(next);
  epochs.Reset(rec.epoch);
  sent_released = sent_durable = rec.epoch;
  // A new generation reserves its standby area again (the standby keeps
  // the replica of the same id and geometry).
  standby_handle = 0;
  standby_reserving = false;
  standby_reserve_again = false;
  standby_blocked = false;
  standby_key.reset();
  to_ship.clear();
  unacked.clear();
  copy.reset();  // (a crash ends a copy first: Agent::OnPidfdReadable)
  held.clear();
}

std::shared_ptr<ApplyChain> Instance::ReleaseImage() {
  ++image_serial;
  std::shared_ptr<ApplyChain> old = std::move(chain);
  staging.Reset();
  region_fds.clear();
  rec.regions.clear();
  rec.epoch = 0;
  record.clear();
  unprotected = false;  // nothing left to protect
  return old;
}

}  // namespace spare::agent
