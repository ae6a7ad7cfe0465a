// hot/wire.h: the agent ↔ standby frame and message bodies.
#include "hot/wire.h"

#include <xxhash.h>

#include <cstring>

#include "common/hex.h"

namespace spare::hot {
namespace {

template <typename T>
void Put(std::vector<std::byte>* out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    out->push_back(static_cast<std::byte>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
}

template <typename T>
T Get(const std::byte* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

constexpr size_t kChecksumAt = 40;

// XXH3-64 of the body, seeded with XXH3-64 of header bytes 0-39 (all but
// the checksum itself): docs/WIRE.md section 4.
uint64_t Checksum(std::span<const std::byte> header, std::span<const std::byte> body) {
  const uint64_t seed = XXH3_64bits(header.data(), kChecksumAt);
  return XXH3_64bits_withSeed(body.data(), body.size(), seed);
}

Status Bad(const std::string& text) { return Status(Code::kBadMessage, text); }

}  // namespace

const char* TypeName(Type t) {
  switch (t) {
    case Type::kHello: return "Hello";
    case Type::kWelcome: return "Welcome";
    case Type::kError: return "Error";
    case Type::kReserve: return "Reserve";
    case Type::kReserved: return "Reserved";
    case Type::kCommit: return "Commit";
    case Type::kAck: return "Ack";
    case Type::kHeartbeat: return "Heartbeat";
    case Type::kFenced: return "Fenced";
    case Type::kRetire: return "Retire";
    case Type::kCopy: return "Copy";
    case Type::kCopyKeys: return "CopyKeys";
    case Type::kCopyDone: return "CopyDone";
    case Type::kLeaving: return "Leaving";
    case Type::kMove: return "Move";
    case Type::kData: return "Data";
  }
  return "?";
}

// --- Writer / Reader ---

Writer& Writer::U16(uint16_t v) {
  Put(&buf_, v);
  return *this;
}
Writer& Writer::U32(uint32_t v) {
  Put(&buf_, v);
  return *this;
}
Writer& Writer::U64(uint64_t v) {
  Put(&buf_, v);
  return *this;
}
Writer& Writer::Str(std::string_view s) {
  Put(&buf_, static_cast<uint32_t>(s.size()));
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  buf_.insert(buf_.end(), p, p + s.size());
  return *this;
}

Status Reader::Short(const char* field, size_t need) const {
  return Bad(std::string(what_) + "." + field + ": needs " + std::to_string(need) +
             " bytes at offset " + std::to_string(at_) + ", the body has " +
             std::to_string(b_.size() - at_) + " left");
}

Result<uint16_t> Reader::U16(const char* field) {
  if (b_.size() - at_ < 2) return Short(field, 2);
  at_ += 2;
  return Get<uint16_t>(b_.data() + at_ - 2);
}
Result<uint32_t> Reader::U32(const char* field) {
  if (b_.size() - at_ < 4) return Short(field, 4);
  at_ += 4;
  return Get<uint32_t>(b_.data() + at_ - 4);
}
Result<uint64_t> Reader::U64(const char* field) {
  if (b_.size() - at_ < 8) return Short(field, 8);
  at_ += 8;
  return Get<uint64_t>(b_.data() + at_ - 8);
}
Result<std::string> Reader::Str(const char* field, size_t max) {
  SPARE_ASSIGN_OR_RETURN(uint32_t n, U32(field));
  if (n > max)
    return Bad(std::string(what_) + "." + field + ": length " + std::to_string(n) +
               " exceeds the limit of " + std::to_string(max));
  if (b_.size() - at_ < n) return Short(field, n);
  std::string s(reinterpret_cast<const char*>(b_.data() + at_), n);
  at_ += n;
  return s;
}
Status Reader::End() {
  if (at_ == b_.size()) return Status::Ok();
  return Bad(std::string(what_) + ": " + std::to_string(b_.size() - at_) +
             " unexpected bytes after the last field");
}

// --- frame ---

std::vector<std::byte> Encode(const Header& h, std::span<const std::byte> body) {
  std::vector<std::byte> out;
  out.reserve(kHeaderSize + body.size());
  Put(&out, kMagic);
  Put(&out, kVersion);
  Put(&out, static_cast<uint16_t>(h.type));
  Put(&out, static_cast<uint32_t>(body.size()));
  Put(&out, uint32_t{0});  // flags
  Put(&out, h.instance);
  Put(&out, h.generation);
  Put(&out, h.seq);
  Put(&out, uint64_t{0});  // checksum, below
  out.insert(out.end(), body.begin(), body.end());
  const uint64_t sum = Checksum(std::span(out).first(kHeaderSize), body);
  for (size_t i = 0; i < 8; ++i)
    out[kChecksumAt + i] = static_cast<std::byte>((sum >> (8 * i)) & 0xff);
  return out;
}

std::vector<std::byte> EncodeData(Header h, uint32_t space, uint64_t offset,
                                  std::span<const std::byte> bytes) {
  // Built in place (one copy of the bytes): Encode's layout, then the body.
  h.type = Type::kData;
  std::vector<std::byte> out;
  out.reserve(kHeaderSize + kDataPrefix + bytes.size());
  Put(&out, kMagic);
  Put(&out, kVersion);
  Put(&out, static_cast<uint16_t>(h.type));
  Put(&out, static_cast<uint32_t>(kDataPrefix + bytes.size()));
  Put(&out, uint32_t{0});  // flags
  Put(&out, h.instance);
  Put(&out, h.generation);
  Put(&out, h.seq);
  Put(&out, uint64_t{0});  // checksum, below
  Put(&out, space);
  Put(&out, static_cast<uint32_t>(bytes.size()));
  Put(&out, offset);
  out.insert(out.end(), bytes.begin(), bytes.end());
  const uint64_t sum = Checksum(std::span(out).first(kHeaderSize), std::span(out).subspan(kHeaderSize));
  for (size_t i = 0; i < 8; ++i)
    out[kChecksumAt + i] = static_cast<std::byte>((sum >> (8 * i)) & 0xff);
  return out;
}

Result<size_t> FrameSize(std::span<const std::byte> header) {
  const std::byte* p = header.data();
  if (uint32_t magic = Get<uint32_t>(p); magic != kMagic)
    return Bad("bad magic " + Hex(magic) + " (not a spare hot-protection frame)");
  if (uint16_t v = Get<uint16_t>(p + 4); v != kVersion)
    return Bad("version " + std::to_string(v) + " (this side speaks " +
               std::to_string(kVersion) + ")");
  const uint16_t type = Get<uint16_t>(p + 6);
  if (type == 0 || type > kMaxType || (type > 3 && type < 10))
    return Bad("unknown message type " + std::to_string(type));
  const uint32_t body_len = Get<uint32_t>(p + 8);
  const size_t limit =
      type == static_cast<uint16_t>(Type::kData) ? kDataPrefix + kMaxData : kMaxBody;
  if (body_len > limit)
    return Bad("body_len " + std::to_string(body_len) + " exceeds the limit of " +
               std::to_string(limit));
  return kHeaderSize + body_len;
}

Result<Frame> Decode(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderSize)
    return Bad("frame of " + std::to_string(bytes.size()) + " bytes is shorter than the " +
               std::to_string(kHeaderSize) + "-byte header");
  SPARE_RETURN_IF_ERROR(FrameSize(bytes).status());
  const std::byte* p = bytes.data();
  const uint16_t type = Get<uint16_t>(p + 6);
  const uint32_t body_len = Get<uint32_t>(p + 8);
  if (body_len != bytes.size() - kHeaderSize)
    return Bad("body_len " + std::to_string(body_len) + " but " +
               std::to_string(bytes.size() - kHeaderSize) + " body bytes arrived");
  if (uint32_t flags = Get<uint32_t>(p + 12); flags != 0)
    return Bad("flags " + Hex(flags) + " (none are defined)");
  Frame f;
  f.header.type = static_cast<Type>(type);
  f.header.body_len = body_len;
  f.header.instance = Get<uint64_t>(p + 16);
  f.header.generation = Get<uint64_t>(p + 24);
  f.header.seq = Get<uint64_t>(p + 32);
  f.body = bytes.subspan(kHeaderSize);
  if (Get<uint64_t>(p + kChecksumAt) != Checksum(bytes.first(kHeaderSize), f.body))
    return Bad(std::string(TypeName(f.header.type)) + " frame fails its checksum");
  return f;
}

// --- bodies ---

std::vector<std::byte> Body(const Hello& m) { return Writer().Str(m.agent).bytes(); }
std::vector<std::byte> Body(const Welcome& m) {
  return Writer().Str(m.standby).U32(m.heartbeat_ms).U32(m.timeout_ms).U16(m.live_port).bytes();
}
std::vector<std::byte> Body(const ErrorMsg& m) {
  return Writer().U16(static_cast<uint16_t>(m.code)).Str(m.message).bytes();
}
std::vector<std::byte> Body(const Reserve& m) {
  Writer w;
  w.Str(m.id).U32(static_cast<uint32_t>(m.regions.size()));
  for (uint64_t size : m.regions) w.U64(size);
  return w.U32(m.slot_count).U64(m.slot_size).Str(m.spec).bytes();
}
std::vector<std::byte> Body(const Reserved& m) {
  return Writer().U64(m.staging_addr).U64(m.staging_bytes).Str(m.key).U64(m.replica_epoch).bytes();
}
std::vector<std::byte> Body(const Commit& m) {
  return Writer().U32(m.first_slot).U32(m.parts).bytes();
}
std::vector<std::byte> Body(const Heartbeat& m) {
  return Writer().U64(m.sent_ns).U64(m.inflight_bytes).bytes();
}
std::vector<std::byte> Body(const Fenced& m) {
  return Writer().U64(m.generation).Str(m.reason).bytes();
}
std::vector<std::byte> Body(const Copy& m) { return Writer().U64(m.epoch).bytes(); }
std::vector<std::byte> Body(const CopyKeys& m) {
  Writer w;
  w.U32(static_cast<uint32_t>(m.regions.size()));
  for (const auto& r : m.regions) w.U64(r.addr).U64(r.size).Str(r.key);
  return w.bytes();
}
std::vector<std::byte> Body(const CopyDone& m) { return Writer().U64(m.bytes).Str(m.record).bytes(); }
std::vector<std::byte> Body(const Leaving& m) { return Writer().U32(m.grace_ms).bytes(); }
std::vector<std::byte> Body(const Move& m) { return Writer().Str(m.reason).bytes(); }

Result<Hello> ParseHello(std::span<const std::byte> body) {
  Reader r(body, "Hello");
  Hello m;
  SPARE_ASSIGN_OR_RETURN(m.agent, r.Str("agent", kMaxName));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Welcome> ParseWelcome(std::span<const std::byte> body) {
  Reader r(body, "Welcome");
  Welcome m;
  SPARE_ASSIGN_OR_RETURN(m.standby, r.Str("standby", kMaxName));
  SPARE_ASSIGN_OR_RETURN(m.heartbeat_ms, r.U32("heartbeat_ms"));
  SPARE_ASSIGN_OR_RETURN(m.timeout_ms, r.U32("timeout_ms"));
  SPARE_ASSIGN_OR_RETURN(m.live_port, r.U16("live_port"));
  SPARE_RETURN_IF_ERROR(r.End());
  if (m.heartbeat_ms == 0 || m.timeout_ms <= m.heartbeat_ms)
    return Bad("Welcome: heartbeat_ms " + std::to_string(m.heartbeat_ms) + " and timeout_ms " +
               std::to_string(m.timeout_ms) + " (need 0 < heartbeat < timeout)");
  return m;
}

Result<ErrorMsg> ParseError(std::span<const std::byte> body) {
  Reader r(body, "Error");
  ErrorMsg m;
  SPARE_ASSIGN_OR_RETURN(uint16_t code, r.U16("code"));
  if (code == 0 || code > static_cast<uint16_t>(Code::kInternal))
    return Bad("Error.code " + std::to_string(code) + " is not a known code");
  m.code = static_cast<Code>(code);
  SPARE_ASSIGN_OR_RETURN(m.message, r.Str("message", kMaxBody));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Reserve> ParseReserve(std::span<const std::byte> body) {
  Reader r(body, "Reserve");
  Reserve m;
  SPARE_ASSIGN_OR_RETURN(m.id, r.Str("id", kMaxName));
  if (m.id.empty()) return Bad("Reserve.id is empty");
  SPARE_ASSIGN_OR_RETURN(uint32_t n, r.U32("regions"));
  if (n > kMaxRegions)
    return Bad("Reserve.regions: " + std::to_string(n) + " regions exceed the limit of " +
               std::to_string(kMaxRegions));
  for (uint32_t i = 0; i < n; ++i) {
    SPARE_ASSIGN_OR_RETURN(uint64_t size, r.U64("regions[].size"));
    if (size == 0 || size % 4096 != 0)
      return Bad("Reserve.regions[" + std::to_string(i) + "].size " + std::to_string(size) +
                 " is not a positive multiple of 4096");
    m.regions.push_back(size);
  }
  SPARE_ASSIGN_OR_RETURN(m.slot_count, r.U32("slot_count"));
  if (m.slot_count == 0 || m.slot_count > kMaxSlotCount)
    return Bad("Reserve.slot_count " + std::to_string(m.slot_count) + " is not in 1.." +
               std::to_string(kMaxSlotCount));
  SPARE_ASSIGN_OR_RETURN(m.slot_size, r.U64("slot_size"));
  if (m.slot_size < kMinSlotSize || m.slot_size > kMaxSlotSize || m.slot_size % 4096 != 0)
    return Bad("Reserve.slot_size " + std::to_string(m.slot_size) +
               " is not a multiple of 4096 in " + std::to_string(kMinSlotSize) + ".." +
               std::to_string(kMaxSlotSize));
  SPARE_ASSIGN_OR_RETURN(m.spec, r.Str("spec", kMaxSpec));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Reserved> ParseReserved(std::span<const std::byte> body) {
  Reader r(body, "Reserved");
  Reserved m;
  SPARE_ASSIGN_OR_RETURN(m.staging_addr, r.U64("staging_addr"));
  SPARE_ASSIGN_OR_RETURN(m.staging_bytes, r.U64("staging_bytes"));
  SPARE_ASSIGN_OR_RETURN(m.key, r.Str("key", kMaxKey));
  SPARE_ASSIGN_OR_RETURN(m.replica_epoch, r.U64("replica_epoch"));
  SPARE_RETURN_IF_ERROR(r.End());
  if (m.staging_bytes == 0 || m.key.empty())
    return Bad("Reserved: an empty staging area or key");
  if (m.staging_addr + m.staging_bytes < m.staging_addr)
    return Bad("Reserved: staging_addr + staging_bytes overflows");
  return m;
}

Result<Commit> ParseCommit(std::span<const std::byte> body) {
  Reader r(body, "Commit");
  Commit m;
  SPARE_ASSIGN_OR_RETURN(m.first_slot, r.U32("first_slot"));
  SPARE_ASSIGN_OR_RETURN(m.parts, r.U32("parts"));
  SPARE_RETURN_IF_ERROR(r.End());
  if (m.first_slot >= kMaxSlotCount || m.parts == 0 || m.parts > kMaxSlotCount)
    return Bad("Commit: first_slot " + std::to_string(m.first_slot) + ", parts " +
               std::to_string(m.parts) + " (need first_slot < " + std::to_string(kMaxSlotCount) +
               " and 1 <= parts <= " + std::to_string(kMaxSlotCount) + ")");
  return m;
}

Result<Heartbeat> ParseHeartbeat(std::span<const std::byte> body) {
  Reader r(body, "Heartbeat");
  Heartbeat m;
  SPARE_ASSIGN_OR_RETURN(m.sent_ns, r.U64("sent_ns"));
  SPARE_ASSIGN_OR_RETURN(m.inflight_bytes, r.U64("inflight_bytes"));
  SPARE_RETURN_IF_ERROR(r.End());
  if (m.inflight_bytes > (64ULL << 30))
    return Bad("Heartbeat.inflight_bytes " + std::to_string(m.inflight_bytes) +
               " exceeds 64 GiB");
  return m;
}

Result<Fenced> ParseFenced(std::span<const std::byte> body) {
  Reader r(body, "Fenced");
  Fenced m;
  SPARE_ASSIGN_OR_RETURN(m.generation, r.U64("generation"));
  SPARE_ASSIGN_OR_RETURN(m.reason, r.Str("reason", kMaxName));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Copy> ParseCopy(std::span<const std::byte> body) {
  Reader r(body, "Copy");
  Copy m;
  SPARE_ASSIGN_OR_RETURN(m.epoch, r.U64("epoch"));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<CopyKeys> ParseCopyKeys(std::span<const std::byte> body) {
  Reader r(body, "CopyKeys");
  CopyKeys m;
  SPARE_ASSIGN_OR_RETURN(uint32_t n, r.U32("regions"));
  if (n > kMaxRegions)
    return Bad("CopyKeys.regions: " + std::to_string(n) + " regions exceed the limit of " +
               std::to_string(kMaxRegions));
  for (uint32_t i = 0; i < n; ++i) {
    CopyKeys::Region g;
    SPARE_ASSIGN_OR_RETURN(g.addr, r.U64("regions[].addr"));
    SPARE_ASSIGN_OR_RETURN(g.size, r.U64("regions[].size"));
    SPARE_ASSIGN_OR_RETURN(g.key, r.Str("regions[].key", kMaxKey));
    if (g.size == 0 || g.key.empty() || g.addr + g.size < g.addr)
      return Bad("CopyKeys.regions[" + std::to_string(i) +
                 "]: empty, without a key, or its end overflows");
    m.regions.push_back(std::move(g));
  }
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<CopyDone> ParseCopyDone(std::span<const std::byte> body) {
  Reader r(body, "CopyDone");
  CopyDone m;
  SPARE_ASSIGN_OR_RETURN(m.bytes, r.U64("bytes"));
  SPARE_ASSIGN_OR_RETURN(m.record, r.Str("record", kMaxRecord));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Leaving> ParseLeaving(std::span<const std::byte> body) {
  Reader r(body, "Leaving");
  Leaving m;
  SPARE_ASSIGN_OR_RETURN(m.grace_ms, r.U32("grace_ms"));
  SPARE_RETURN_IF_ERROR(r.End());
  if (m.grace_ms == 0 || m.grace_ms > 600'000)
    return Bad("Leaving.grace_ms " + std::to_string(m.grace_ms) + " is not in 1..600000");
  return m;
}

Result<Move> ParseMove(std::span<const std::byte> body) {
  Reader r(body, "Move");
  Move m;
  SPARE_ASSIGN_OR_RETURN(m.reason, r.Str("reason", kMaxName));
  SPARE_RETURN_IF_ERROR(r.End());
  return m;
}

Result<Data> ParseData(std::span<const std::byte> body) {
  Reader r(body, "Data");
  Data m;
  SPARE_ASSIGN_OR_RETURN(m.space, r.U32("space"));
  SPARE_ASSIGN_OR_RETURN(uint32_t n, r.U32("length"));
  SPARE_ASSIGN_OR_RETURN(m.offset, r.U64("offset"));
  if (n > kMaxData)
    return Bad("Data.length " + std::to_string(n) + " exceeds the limit of " +
               std::to_string(kMaxData));
  if (body.size() - kDataPrefix != n)
    return Bad("Data.length " + std::to_string(n) + " but " +
               std::to_string(body.size() - kDataPrefix) + " bytes follow");
  if (m.offset > UINT64_MAX - n) return Bad("Data.offset " + std::to_string(m.offset) + " + length overflows");
  m.bytes = body.subspan(kDataPrefix, n);
  return m;
}

}  // namespace spare::hot
