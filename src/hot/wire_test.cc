// hot/wire: every message round-trips; every truncation, every flipped
// byte, every lying length and every out-of-limit field is refused with
// kBadMessage naming what was wrong.
#include "hot/wire.h"

#include <gtest/gtest.h>

#include <cstring>

namespace spare::hot {
namespace {

std::vector<std::byte> Frame(Type t, const std::vector<std::byte>& body, uint64_t seq = 7) {
  return Encode(Header{t, 0, 0x1122334455667788ull, 42, seq}, body);
}

void ExpectBad(const Status& st, const std::string& needle) {
  EXPECT_EQ(st.code(), Code::kBadMessage) << st.ToString();
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.ToString();
}

Reserve SampleReserve() {
  Reserve m;
  m.id = "kv1";
  m.regions = {1ull << 30, 64 << 20};
  m.slot_count = 8;
  m.slot_size = 16 << 20;
  m.spec = R"({"argv":["spare-kv","--port","7000"]})";
  return m;
}

TEST(HotWire, FramesRoundTrip) {
  auto bytes = Frame(Type::kReserve, Body(SampleReserve()), 99);
  ASSERT_EQ(bytes.size(), kHeaderSize + Body(SampleReserve()).size());
  auto f = Decode(bytes);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->header.type, Type::kReserve);
  EXPECT_EQ(f->header.instance, 0x1122334455667788ull);
  EXPECT_EQ(f->header.generation, 42u);
  EXPECT_EQ(f->header.seq, 99u);
  auto r = ParseReserve(f->body);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->id, "kv1");
  EXPECT_EQ(r->regions, (std::vector<uint64_t>{1ull << 30, 64 << 20}));
  EXPECT_EQ(r->slot_count, 8u);
  EXPECT_EQ(r->slot_size, 16u << 20);
  EXPECT_EQ(r->spec, SampleReserve().spec);
}

TEST(HotWire, EveryMessageRoundTrips) {
  {
    auto m = ParseHello(Body(Hello{"host-a"}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->agent, "host-a");
  }
  {
    auto m = ParseWelcome(Body(Welcome{"spare-host", 10, 60}));
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->standby, "spare-host");
    EXPECT_EQ(m->heartbeat_ms, 10u);
    EXPECT_EQ(m->timeout_ms, 60u);
  }
  {
    auto m = ParseError(Body(ErrorMsg{Code::kStaleGeneration, "generation 3 < 4"}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->code, Code::kStaleGeneration);
    EXPECT_EQ(m->message, "generation 3 < 4");
  }
  {
    auto m = ParseReserved(Body(Reserved{0x7f0000000000, 1 << 20, std::string("\0key\1", 5), 17}));
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->staging_addr, 0x7f0000000000u);
    EXPECT_EQ(m->staging_bytes, 1u << 20);
    EXPECT_EQ(m->key, std::string("\0key\1", 5));
    EXPECT_EQ(m->replica_epoch, 17u);
  }
  {
    auto m = ParseCommit(Body(Commit{7, 2}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->first_slot, 7u);
    EXPECT_EQ(m->parts, 2u);
  }
  {
    auto m = ParseHeartbeat(Body(Heartbeat{123456789, 64 << 20}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->sent_ns, 123456789u);
    EXPECT_EQ(m->inflight_bytes, 64u << 20);
  }
  {
    auto m = ParseFenced(Body(Fenced{5, "agent host-a missed 6 heartbeats"}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->generation, 5u);
    EXPECT_EQ(m->reason, "agent host-a missed 6 heartbeats");
  }
  {
    auto m = ParseCopy(Body(Copy{41}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->epoch, 41u);
  }
  {
    CopyKeys k;
    k.regions = {{0x200000000000, 1 << 30, "key-a"}, {0x300000000000, 4096, "key-b"}};
    auto m = ParseCopyKeys(Body(k));
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->regions.size(), 2u);
    EXPECT_EQ(m->regions[1].addr, 0x300000000000u);
    EXPECT_EQ(m->regions[0].size, 1u << 30);
    EXPECT_EQ(m->regions[1].key, "key-b");
    k.regions[0].key.clear();
    ExpectBad(ParseCopyKeys(Body(k)).status(), "without a key");
    k.regions[0] = {UINT64_MAX - 10, 4096, "k"};
    ExpectBad(ParseCopyKeys(Body(k)).status(), "overflows");
  }
  {
    // The largest record fits a frame.
    std::string record(kMaxRecord, 'r');
    auto body = Body(CopyDone{1 << 20, record});
    ASSERT_LE(body.size(), kMaxBody);
    auto m = ParseCopyDone(body);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->bytes, 1u << 20);
    EXPECT_EQ(m->record, record);
    record.push_back('x');
    ExpectBad(ParseCopyDone(Body(CopyDone{1, record})).status(), "record");
  }
  {
    auto m = ParseLeaving(Body(Leaving{5000}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->grace_ms, 5000u);
    ExpectBad(ParseLeaving(Body(Leaving{0})).status(), "grace_ms 0");
  }
  {
    auto m = ParseMove(Body(Move{"spare failover by an operator"}));
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->reason, "spare failover by an operator");
  }
  // Ack and Retire have empty bodies: everything is in the header.
  auto ack = Decode(Frame(Type::kAck, {}, 31));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->header.seq, 31u);
  EXPECT_TRUE(ack->body.empty());
}

TEST(HotWire, EveryTruncationIsRefused) {
  auto bytes = Frame(Type::kReserve, Body(SampleReserve()));
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto f = Decode(std::span(bytes).first(n));
    ASSERT_FALSE(f.ok()) << "a " << n << "-byte prefix decoded";
    EXPECT_EQ(f.status().code(), Code::kBadMessage);
  }
}

TEST(HotWire, EveryFlippedBitIsRefused) {
  auto bytes = Frame(Type::kCommit, Body(Commit{0, 1}));
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit : {0, 7}) {
      auto copy = bytes;
      copy[i] ^= static_cast<std::byte>(1 << bit);
      auto f = Decode(copy);
      ASSERT_FALSE(f.ok()) << "byte " << i << " bit " << bit << " flipped and still decoded";
      EXPECT_EQ(f.status().code(), Code::kBadMessage);
    }
  }
}

TEST(HotWire, HeaderFieldsAreNamed) {
  auto good = Frame(Type::kHeartbeat, Body(Heartbeat{1}));
  auto with = [&](size_t at, uint32_t v, size_t width) {
    auto b = good;
    for (size_t i = 0; i < width; ++i) b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    return b;
  };
  ExpectBad(Decode(with(0, 0x12345678, 4)).status(), "bad magic 0x12345678");
  ExpectBad(Decode(with(4, 9, 2)).status(), "version 9");
  ExpectBad(Decode(with(6, 5, 2)).status(), "unknown message type 5");
  ExpectBad(Decode(with(6, 0, 2)).status(), "unknown message type 0");
  ExpectBad(Decode(with(6, 23, 2)).status(), "unknown message type 23");
  ExpectBad(Decode(with(8, 9, 4)).status(), "body_len 9 but 16 body bytes arrived");
  ExpectBad(Decode(with(8, 1 << 20, 4)).status(), "exceeds the limit");
  ExpectBad(Decode(with(12, 1, 4)).status(), "flags");
  ExpectBad(Decode(with(16, 1, 1)).status(), "Heartbeat frame fails its checksum");
  std::vector<std::byte> big(kMaxBody + 1);
  ExpectBad(Decode(Encode(Header{Type::kCommit}, big)).status(), "exceeds the limit");
}

// Bodies whose frames are intact (the checksum matches) but whose fields lie.
TEST(HotWire, BodiesNeverTrustTheirLengths) {
  // A string claiming more bytes than the body holds.
  auto lying = Writer().U32(0xfffffff0).bytes();
  ExpectBad(ParseHello(lying).status(), "Hello.agent: length 4294967280 exceeds the limit");
  auto short_str = Writer().U32(10).bytes();
  ExpectBad(ParseHello(short_str).status(), "Hello.agent: needs 10 bytes");
  // A field cut short.
  auto cut = Body(Commit{1, 2});
  cut.resize(6);
  ExpectBad(ParseCommit(cut).status(), "Commit.parts: needs 4 bytes at offset 4, the body has 2");
  // Bytes after the last field.
  auto trailing = Body(Heartbeat{1, 0});
  trailing.push_back(std::byte{0});
  ExpectBad(ParseHeartbeat(trailing).status(), "Heartbeat: 1 unexpected bytes");
  // Counts and sizes over their limits.
  auto many = Writer().Str("kv").U32(kMaxRegions + 1).bytes();
  ExpectBad(ParseReserve(many).status(), "65 regions exceed the limit of 64");
  auto odd = Writer().Str("kv").U32(1).U64(4097).U32(8).U64(1 << 20).Str("{}").bytes();
  ExpectBad(ParseReserve(odd).status(), "regions[0].size 4097 is not a positive multiple");
  auto zero = Writer().Str("kv").U32(1).U64(0).U32(8).U64(1 << 20).Str("{}").bytes();
  ExpectBad(ParseReserve(zero).status(), "regions[0].size 0");
  auto no_id = Writer().Str("").U32(0).U32(8).U64(1 << 20).Str("{}").bytes();
  ExpectBad(ParseReserve(no_id).status(), "Reserve.id is empty");
  auto no_slots = Writer().Str("kv").U32(0).U32(0).U64(1 << 20).Str("{}").bytes();
  ExpectBad(ParseReserve(no_slots).status(), "Reserve.slot_count 0 is not in 1..1024");
  auto tiny = Writer().Str("kv").U32(0).U32(8).U64(4096).Str("{}").bytes();
  ExpectBad(ParseReserve(tiny).status(), "Reserve.slot_size 4096 is not a multiple");
  auto good = Writer().Str("kv").U32(0).U32(8).U64(1 << 20).Str("{}").bytes();
  EXPECT_TRUE(ParseReserve(good).ok());
  auto long_id = Writer().Str(std::string(kMaxName + 1, 'a')).bytes();
  ExpectBad(ParseReserve(long_id).status(), "Reserve.id: length 257 exceeds the limit of 256");
  // Slots out of any area, and values that would overflow when added.
  ExpectBad(ParseCommit(Body(Commit{1024, 1})).status(), "first_slot 1024, parts 1");
  ExpectBad(ParseCommit(Body(Commit{0, 0})).status(), "first_slot 0, parts 0");
  ExpectBad(ParseReserved(Body(Reserved{~0ull - 10, 100, "k", 0})).status(), "overflows");
  ExpectBad(ParseReserved(Body(Reserved{4096, 100, "", 0})).status(), "empty staging area or key");
  // Unknown error codes and nonsense heartbeat settings.
  ExpectBad(ParseError(Writer().U16(200).Str("x").bytes()).status(), "Error.code 200");
  ExpectBad(ParseWelcome(Body(Welcome{"s", 50, 50})).status(), "need 0 < heartbeat < timeout");
  ExpectBad(ParseWelcome(Body(Welcome{"s", 0, 50})).status(), "need 0 < heartbeat < timeout");
}

// Data: the bytes a put would write. Its frame may be larger than any
// control frame, up to kMaxData bytes of payload, and no larger.
TEST(HotWire, DataCarriesBytesAndNeverTrustsItsLength) {
  std::vector<std::byte> bytes(kMaxData);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 7);
  auto frame = EncodeData(Header{Type::kHello, 0, 3, 2, 9}, 1, 4096, bytes);
  auto f = Decode(frame);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->header.type, Type::kData);
  EXPECT_EQ(f->header.instance, 3u);
  auto m = ParseData(f->body);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->space, 1u);
  EXPECT_EQ(m->offset, 4096u);
  ASSERT_EQ(m->bytes.size(), bytes.size());
  EXPECT_EQ(std::memcmp(m->bytes.data(), bytes.data(), bytes.size()), 0);
  // One byte more than kMaxData: the frame itself is refused.
  bytes.push_back(std::byte{1});
  std::vector<std::byte> body = Writer().U32(0).U32(static_cast<uint32_t>(bytes.size())).U64(0).bytes();
  body.insert(body.end(), bytes.begin(), bytes.end());
  ExpectBad(Decode(Encode(Header{Type::kData, 0, 3, 2, 9}, body)).status(),
            "exceeds the limit of 1048592");
  // A control frame may not use Data's limit.
  std::vector<std::byte> fat(kMaxBody + 1);
  ExpectBad(Decode(Encode(Header{Type::kCommit, 0, 3, 2, 9}, fat)).status(),
            "exceeds the limit of 73728");
  // A length that lies, one over the limit, an offset that overflows.
  auto lies = Writer().U32(0).U32(10).U64(0).bytes();
  lies.resize(lies.size() + 4);
  ExpectBad(ParseData(lies).status(), "Data.length 10 but 4 bytes follow");
  ExpectBad(ParseData(Writer().U32(0).U32(kMaxData + 1).U64(0).bytes()).status(),
            "Data.length 1048577 exceeds the limit");
  auto wraps = Writer().U32(0).U32(2).U64(~0ull).bytes();
  wraps.resize(wraps.size() + 2);
  ExpectBad(ParseData(wraps).status(), "overflows");
  ExpectBad(ParseData(Writer().U32(0).bytes()).status(), "Data.length: needs 4 bytes");
}

}  // namespace
}  // namespace spare::hot
