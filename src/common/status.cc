#include "spare/status.h"

#include <cstring>

namespace spare {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "Ok";
    case Code::kInvalidArgument:
      return "InvalidArgument";
    case Code::kNotFound:
      return "NotFound";
    case Code::kAlreadyExists:
      return "AlreadyExists";
    case Code::kOutOfBounds:
      return "OutOfBounds";
    case Code::kBadMessage:
      return "BadMessage";
    case Code::kStaleGeneration:
      return "StaleGeneration";
    case Code::kTornEpoch:
      return "TornEpoch";
    case Code::kBadAccessKey:
      return "BadAccessKey";
    case Code::kResourceExhausted:
      return "ResourceExhausted";
    case Code::kUnavailable:
      return "Unavailable";
    case Code::kFailedPrecondition:
      return "FailedPrecondition";
    case Code::kUnsupported:
      return "Unsupported";
    case Code::kIoError:
      return "IoError";
    case Code::kChecksumMismatch:
      return "ChecksumMismatch";
    case Code::kTornImage:
      return "TornImage";
    case Code::kUndeclaredWrite:
      return "UndeclaredWrite";
    case Code::kInternal:
      return "Internal";
  }
  return "Unknown";
}

Status Status::FromErrno(std::string_view what, int err) {
  return Status(Code::kIoError, std::string(what) + ": " + std::strerror(err));
}

std::string Status::ToString() const {
  if (ok()) return "Ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::With(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

}  // namespace spare
