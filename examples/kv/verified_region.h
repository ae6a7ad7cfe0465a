// verified_region.h — for spare-kv's unit tests: memory for a Store that
// checks, at every Commit(), that each byte the store and its arena changed
// was declared (spare/declare.h), as spare-kv needs to ship its epochs.
//
// A declared region of an unprotected runtime (no agent) under
// SPARE_VERIFY_WRITES=1 (spare/runtime.h): Commit() fails with
// kUndeclaredWrite naming the first byte written but not declared.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

#include "spare/runtime.h"

namespace kv {

class VerifiedRegion {
 public:
  // Maps `size` bytes; the Status says why not.
  spare::Status Open(size_t size) {
    setenv("SPARE_VERIFY_WRITES", "1", 1);
    auto rt = spare::Runtime::Unprotected();
    unsetenv("SPARE_VERIFY_WRITES");
    if (!rt.ok()) return rt.status();
    rt_.emplace(std::move(rt).value());
    spare::RegionOptions o;
    o.writes = spare::WriteTracking::kDeclared;
    auto region = rt_->region("kv", size, o);
    if (!region.ok()) return region.status();
    data_ = (*region)->data();
    return spare::Status::Ok();
  }
  bool open() const { return rt_.has_value(); }
  void* data() const { return data_; }
  // Checks every change since the last Commit() (kUndeclaredWrite).
  spare::Status Commit() { return rt_->commit().status(); }
  // Dirty pages checked so far: > 0 once anything was written.
  uint64_t pages_verified() const { return rt_->stats().pages_verified; }

 private:
  std::optional<spare::Runtime> rt_;
  void* data_ = nullptr;
};

}  // namespace kv
