#include "ipc/wire.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace spare::ipc {
namespace {

Message Sample() {
  Message m;
  m.type = MsgType::kCommit;
  m.generation = 7;
  m.body = {{"epoch", 42}, {"first_slot", 3}, {"parts", 1}};
  m.blob = "record-bytes";
  return m;
}

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(Wire, RoundTrip) {
  auto enc = Encode(Sample());
  ASSERT_TRUE(enc.ok());
  auto dec = Decode(Bytes(*enc));
  ASSERT_TRUE(dec.ok()) << dec.status().ToString();
  EXPECT_EQ(dec->type, MsgType::kCommit);
  EXPECT_EQ(dec->generation, 7u);
  EXPECT_EQ(dec->body["epoch"], 42);
  EXPECT_EQ(dec->blob, "record-bytes");
}

// Every corruption is refused with kBadMessage and a message naming it.
TEST(Wire, RefusesBadFrames) {
  std::string good = *Encode(Sample());
  struct Case {
    const char* name;
    std::string bytes;
    const char* says;
  };
  std::vector<Case> cases;
  cases.push_back({"short", good.substr(0, 10), "shorter than the header"});
  std::string b = good;
  b[0] ^= 1;
  cases.push_back({"magic", b, "magic"});
  b = good;
  b[4] = 9;
  cases.push_back({"version", b, "version"});
  b = good;
  b[6] = 99;
  cases.push_back({"type", b, "unknown message type"});
  b = good;
  b[8] = char(0xff);
  b[9] = char(0xff);
  b[10] = char(0xff);
  cases.push_back({"json_len", b, "exceed the limits"});
  cases.push_back({"truncated", good.substr(0, good.size() - 1), "do not match the frame size"});
  b = good;
  b[good.size() - 1] ^= 1;
  cases.push_back({"blob flip", b, "checksum"});
  for (const auto& c : cases) {
    auto r = Decode(Bytes(c.bytes));
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), Code::kBadMessage) << c.name;
    EXPECT_NE(r.status().message().find(c.says), std::string::npos)
        << c.name << ": " << r.status().message();
  }
}

TEST(Wire, RefusesNonObjectBody) {
  Message m = Sample();
  m.body = nlohmann::json::array({1, 2});
  auto r = Decode(Bytes(*Encode(m)));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a JSON object"), std::string::npos);
}

TEST(Wire, EncodeRefusesOversizedBlob) {
  Message m = Sample();
  m.blob.assign(kMaxBlob + 1, 'x');
  auto r = Encode(m);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
}

TEST(Wire, SendReceiveCarriesFds) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Message m = Sample();
  m.fds.emplace_back(p[1]);
  ASSERT_TRUE(Send(a.get(), m).ok());
  auto got = Receive(b.get());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->has_value());
  ASSERT_EQ((*got)->fds.size(), 1u);
  // The received fd is the pipe's write end: writing shows up on p[0].
  ASSERT_EQ(write((*got)->fds[0].get(), "z", 1), 1);
  char c = 0;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  EXPECT_EQ(c, 'z');
  close(p[0]);
  // Nothing more: dont_wait gives nullopt; closing the peer gives kUnavailable.
  auto none = Receive(b.get(), /*dont_wait=*/true);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  a.reset();
  auto eof = Receive(b.get());
  EXPECT_EQ(eof.status().code(), Code::kUnavailable);
}

TEST(Wire, ReceiveRefusesGarbagePacket) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  ASSERT_EQ(write(a.get(), "garbage-garbage-garbage-garbage-garbage", 39), 39);
  auto r = Receive(b.get());
  EXPECT_EQ(r.status().code(), Code::kBadMessage);
  // The socket stays usable for the next good frame.
  ASSERT_TRUE(Send(a.get(), Sample()).ok());
  auto ok = Receive(b.get());
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->has_value());
}

TEST(Wire, StatusOfCarriesCode) {
  Message e = ErrorMessage(Status(Code::kStaleGeneration, "generation 3 < 4"));
  Status st = StatusOf(*Decode(Bytes(*Encode(e))));
  EXPECT_EQ(st.code(), Code::kStaleGeneration);
  EXPECT_EQ(st.message(), "generation 3 < 4");
}

}  // namespace
}  // namespace spare::ipc
