// hot/wire.h — the agent ↔ standby protocol (hot protection), as bytes.
//
// Control messages travel as UCX active messages (net/transport.h). Bulk
// epoch data goes by put into the standby's registered staging area (or,
// where the connection runs over TCP, in Data messages: UCX 1.13 emulates
// puts over TCP with messages whose completion aborts the target process
// when the initiator died mid-put), and a Commit names what was put. Byte layout and every message in docs/WIRE.md
// section 4. Independent of UCX, so decoders can be unit-tested and fuzzed.
//
// Frame (little endian), 48-byte header then the body:
//   u32 magic "SPHT" | u16 version | u16 type | u32 body_len | u32 flags (0)
//   | u64 instance (the standby's handle; 0 before Reserved)
//   | u64 generation (the sender's owner generation)
//   | u64 seq (a request's sequence number; the epoch for Commit and Ack)
//   | u64 checksum: XXH3-64 of the body, seeded with XXH3-64 of header
//     bytes 0-39
//
// Decoders trust nothing: Decode() checks magic, version, type, that
// body_len equals what arrived and is within kMaxBody, flags, and the
// checksum; each message's Parse checks every length against the bytes
// left, every count and size against its limit, and that nothing trails.
// A refusal is kBadMessage naming the message and field.
//
// Threading: free functions and value types; no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spare/status.h"

namespace spare::hot {

inline constexpr uint32_t kMagic = 0x54485053;  // "SPHT"
// The UCX active-message id of this protocol, on agents and standbys alike.
inline constexpr uint16_t kAmId = 1;
inline constexpr uint16_t kVersion = 2;  // 2: Welcome.live_port (hot/live.h)
inline constexpr size_t kHeaderSize = 48;
// Control only (data goes by put): room for a 64 KiB epoch record in CopyDone.
inline constexpr size_t kMaxBody = 72 * 1024;
inline constexpr size_t kMaxRecord = 64 * 1024;  // epoch::kMaxRecord
inline constexpr size_t kMaxName = 256;        // ids, names, reasons
inline constexpr size_t kMaxRegions = 64;
inline constexpr size_t kMaxKey = 4096;        // a packed UCX remote key
inline constexpr size_t kMaxSpec = 32 * 1024;  // the launch spec (JSON text)
// The standby's staging area has the agent's slot geometry (epoch/staging.h)
// so that a slot put there is validated and applied exactly as the agent
// does it locally: ValidateEpoch, then WriteEpoch into the replica.
inline constexpr uint32_t kMaxSlotCount = 1024;
inline constexpr uint64_t kMinSlotSize = 128 * 1024;
inline constexpr uint64_t kMaxSlotSize = 1ULL << 30;

enum class Type : uint16_t {
  kHello = 1,       // agent → standby, first message on a connection
  kWelcome = 2,     // standby → agent
  kError = 3,       // either way, answers the request with the same seq
  kReserve = 10,    // agent → standby: reserve (or find) an instance's area
  kReserved = 11,   // standby → agent: the area, its staging key
  kCommit = 12,     // agent → standby: epoch `seq` is in staging slots; apply it
  kAck = 13,        // standby → agent: epoch `seq` is applied to the replica
  kHeartbeat = 14,  // both ways, on their own schedules
  kFenced = 15,     // standby → agent: this owner generation is over
  kRetire = 16,     // agent → standby: free the instance's area
  kCopy = 17,       // agent → standby: a full copy of the image at epoch E begins
  kCopyKeys = 18,   // standby → agent: where the replica's regions take puts
  kCopyDone = 19,   // agent → standby: the image of epoch `seq` is all put
  kLeaving = 20,    // agent → standby: restarting; do not suspect me for grace_ms
  kMove = 21,       // agent → standby: planned failover; the replica has everything
  kData = 22,       // agent → standby: bytes for the staging area or, in a full copy, a region
};
inline constexpr uint16_t kMaxType = 22;
// Bytes one Data frame carries at most (its body is kDataPrefix more).
inline constexpr size_t kMaxData = 1 << 20;
inline constexpr size_t kDataPrefix = 16;
const char* TypeName(Type t);

struct Header {
  Type type = Type::kHello;
  uint32_t body_len = 0;
  uint64_t instance = 0;
  uint64_t generation = 0;
  uint64_t seq = 0;
};

// A decoded frame: its header and a view of its body (into the bytes given
// to Decode).
struct Frame {
  Header header;
  std::span<const std::byte> body;
};

// Builds a body field by field.
class Writer {
 public:
  Writer& U16(uint16_t v);
  Writer& U32(uint32_t v);
  Writer& U64(uint64_t v);
  Writer& Str(std::string_view s);  // u32 length + bytes
  const std::vector<std::byte>& bytes() const { return buf_; }

 private:
  std::vector<std::byte> buf_;
};

// Reads a body field by field; every read is checked against what is left.
class Reader {
 public:
  // `what` names the message in errors ("Reserve").
  Reader(std::span<const std::byte> body, const char* what) : b_(body), what_(what) {}
  Result<uint16_t> U16(const char* field);
  Result<uint32_t> U32(const char* field);
  Result<uint64_t> U64(const char* field);
  Result<std::string> Str(const char* field, size_t max);
  // kBadMessage if any byte is left unread.
  Status End();

 private:
  Status Short(const char* field, size_t need) const;
  std::span<const std::byte> b_;
  size_t at_ = 0;
  const char* what_;
};

// A whole frame. REQUIRES: body.size() <= kMaxBody.
std::vector<std::byte> Encode(const Header& h, std::span<const std::byte> body);
// A whole Data frame (h.type is set to kData): `bytes` go to offset
// `offset` of `space` (kStagingSpace, or 1 + a region index).
// REQUIRES: bytes.size() <= kMaxData.
std::vector<std::byte> EncodeData(Header h, uint32_t space, uint64_t offset,
                                  std::span<const std::byte> bytes);
Result<Frame> Decode(std::span<const std::byte> bytes);
// For frames back to back on a stream (hot/live.h): the whole frame's size
// from its first kHeaderSize bytes, once magic, version, type and body_len
// (within its limit) check out. REQUIRES: header.size() >= kHeaderSize.
Result<size_t> FrameSize(std::span<const std::byte> header);

// --- messages (body layouts in docs/WIRE.md) ---

struct Hello {
  std::string agent;  // the agent's name (its host, by default)
};
// Data body: u32 space | u32 length | u64 offset | length bytes.
inline constexpr uint32_t kStagingSpace = 0;  // offsets from the staging area's start
struct Data {
  uint32_t space = kStagingSpace;  // 0: staging; 1 + i: replica region i (full copy)
  uint64_t offset = 0;
  std::span<const std::byte> bytes;  // a view into the frame
};
Result<Data> ParseData(std::span<const std::byte> body);
struct Welcome {
  std::string standby;
  uint32_t heartbeat_ms = 0;  // how often the standby sends heartbeats
  uint32_t timeout_ms = 0;    // silence after which it suspects the agent
  uint16_t live_port = 0;     // its liveness port (hot/live.h) on the same host; 0: none
};
struct ErrorMsg {
  Code code = Code::kInternal;
  std::string message;
};
struct Reserve {
  std::string id;                 // the instance
  std::vector<uint64_t> regions;  // region sizes, bytes, page multiples
  uint32_t slot_count = 0;        // the instance's staging geometry
  uint64_t slot_size = 0;
  std::string spec;               // the launch spec, JSON text
};
struct Reserved {
  uint64_t staging_addr = 0;  // where puts go (the standby's address)
  uint64_t staging_bytes = 0;
  std::string key;            // packed UCX remote key of the staging area
  uint64_t replica_epoch = 0;  // what the replica holds (0: empty, full copy)
};
// The epoch (header seq) was put into slots [first_slot, first_slot +
// parts) of the standby's staging area, wrapping; the slots carry their
// own generation, epoch, record, entry table and hashes (WIRE.md §2).
struct Commit {
  uint32_t first_slot = 0;
  uint32_t parts = 0;
};
struct Heartbeat {
  uint64_t sent_ns = 0;  // sender's CLOCK_MONOTONIC (for round trips only)
  // Bytes the sender is about to put on this connection (an epoch's slots,
  // a full-copy window): the receiver's silence allowance grows by the
  // time they take at kMinBandwidth, since messages queue behind them.
  uint64_t inflight_bytes = 0;
};
// The bandwidth a connection is assumed to sustain at least, for the
// allowance above (TCP loopback here does ~500 MB/s; RDMA far more).
inline constexpr uint64_t kMinBandwidth = 100ULL << 20;  // bytes per second
struct Fenced {
  uint64_t generation = 0;  // the generation that owns the instance now
  std::string reason;
};
// A full copy replaces the replica with the agent's committed image: the
// standby empties the replica and stops counting it as an epoch (it cannot
// be failed over to until CopyDone), then the agent puts every extent of
// the image that was ever written, and CopyDone makes it epoch `seq`.
struct Copy {
  uint64_t epoch = 0;  // the image's epoch being copied
};
struct CopyKeys {
  struct Region {
    uint64_t addr = 0, size = 0;  // the replica mapping on the standby
    std::string key;              // packed UCX remote key of it
  };
  std::vector<Region> regions;  // in region index order
};
struct CopyDone {
  uint64_t bytes = 0;  // put in all (for the standby's log and metrics)
  std::string record;  // the epoch's record
};
struct Move {
  std::string reason;  // why (an operator's `spare failover`, the program's request)
};
struct Leaving {
  uint32_t grace_ms = 0;  // a new agent under the same name takes over within this
};

std::vector<std::byte> Body(const Hello& m);
std::vector<std::byte> Body(const Welcome& m);
std::vector<std::byte> Body(const ErrorMsg& m);
std::vector<std::byte> Body(const Reserve& m);
std::vector<std::byte> Body(const Reserved& m);
std::vector<std::byte> Body(const Commit& m);
std::vector<std::byte> Body(const Heartbeat& m);
std::vector<std::byte> Body(const Fenced& m);
std::vector<std::byte> Body(const Copy& m);
std::vector<std::byte> Body(const CopyKeys& m);
std::vector<std::byte> Body(const CopyDone& m);
std::vector<std::byte> Body(const Leaving& m);
std::vector<std::byte> Body(const Move& m);

Result<Hello> ParseHello(std::span<const std::byte> body);
Result<Welcome> ParseWelcome(std::span<const std::byte> body);
Result<ErrorMsg> ParseError(std::span<const std::byte> body);
Result<Reserve> ParseReserve(std::span<const std::byte> body);
Result<Reserved> ParseReserved(std::span<const std::byte> body);
Result<Commit> ParseCommit(std::span<const std::byte> body);
Result<Heartbeat> ParseHeartbeat(std::span<const std::byte> body);
Result<Fenced> ParseFenced(std::span<const std::byte> body);
Result<Copy> ParseCopy(std::span<const std::byte> body);
Result<CopyKeys> ParseCopyKeys(std::span<const std::byte> body);
Result<CopyDone> ParseCopyDone(std::span<const std::byte> body);
Result<Leaving> ParseLeaving(std::span<const std::byte> body);
Result<Move> ParseMove(std::span<const std::byte> body);

}  // namespace spare::hot
