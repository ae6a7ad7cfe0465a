// spare/status.h — the one error convention of spare.
//
// A Status is a code that names the situation plus a human message that
// says what was wrong and, where possible, what to do. Result<T> is a value
// or a Status. Neither throws. Context is prepended at each layer with
// Status::With("while doing X"), so a message reads outermost-first.
//
// Thread-safety: plain values; safe to copy between threads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace spare {

enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,     // caller passed something malformed (bad config, bad flag)
  kNotFound,            // named thing does not exist
  kAlreadyExists,       // named thing exists and may not be created again
  kOutOfBounds,         // a write/read outside the target's reserved area
  kBadMessage,          // a wire message failed to decode (magic, version, length, checksum)
  kStaleGeneration,     // message from an older owner generation; refused
  kTornEpoch,           // an epoch's parts are incomplete or inconsistent
  kBadAccessKey,        // request carried the wrong access key
  kResourceExhausted,   // staging full past its bound, address range taken, ...
  kUnavailable,         // peer (agent, standby) not reachable; retry may help
  kFailedPrecondition,  // state does not allow the operation (e.g. instance failed)
  kUnsupported,         // kernel or platform lacks a feature
  kIoError,             // a system call failed; message carries errno text
  kChecksumMismatch,    // data does not match the checksum sent with it (corrupted in transit or
                        // memory)
  kTornImage,           // a committed image is between two epochs; nothing may resume from it
  kUndeclaredWrite,     // a region that declares its writes was written where it declared none
  kInternal,            // an invariant broke; a bug in spare
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  // An IoError for a failed system call: "<what>: <strerror(err)>".
  static Status FromErrno(std::string_view what, int err);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kOutOfBounds: region heap: write at 0x... past end 0x..."
  std::string ToString() const;
  // Returns a copy with "context: " prepended to the message.
  Status With(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Status status) : v_(std::move(status)) {}

  bool ok() const { return v_.index() == 0; }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<1>(v_);
  }
  // REQUIRES: ok().
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace spare

// Propagate a non-ok Status from an expression returning Status.
#define SPARE_RETURN_IF_ERROR(expr) \
  do {                              \
    ::spare::Status _st = (expr);   \
    if (!_st.ok()) return _st;      \
  } while (0)

#define SPARE_CONCAT_INNER(a, b) a##b
#define SPARE_CONCAT(a, b) SPARE_CONCAT_INNER(a, b)
// SPARE_ASSIGN_OR_RETURN(auto x, Fn()); — unwraps a Result or returns its Status.
#define SPARE_ASSIGN_OR_RETURN(decl, expr)                                                \
  auto SPARE_CONCAT(_res_, __LINE__) = (expr);                                            \
  if (!SPARE_CONCAT(_res_, __LINE__).ok()) return SPARE_CONCAT(_res_, __LINE__).status(); \
  decl = std::move(SPARE_CONCAT(_res_, __LINE__)).value()
