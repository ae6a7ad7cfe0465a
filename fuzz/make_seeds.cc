// make_seeds: writes the seed corpora in fuzz/corpus/ (valid frames of every
// kind, so the fuzzers start from what the daemons really send). Run it from
// the repository root after a change to either wire format:
//   build-fuzz/bin/make_seeds fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hot/wire.h"
#include "ipc/wire.h"

namespace {

void Write(const std::string& dir, const std::string& name, const void* p, size_t n) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + name, std::ios::binary).write(static_cast<const char*>(p), n);
}

void Hot(const std::string& dir, const std::string& name, spare::hot::Type t,
         const std::vector<std::byte>& body) {
  auto f = spare::hot::Encode(spare::hot::Header{t, 0, 7, 3, 42}, body);
  Write(dir, name, f.data(), f.size());
  Write(dir, name + ".body", body.data(), body.size());
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spare::hot;
  const std::string root = argc > 1 ? argv[1] : "fuzz/corpus";
  const std::string h = root + "/fuzz_hot_wire";
  Hot(h, "hello", Type::kHello, Body(Hello{"agent:/run/spare"}));
  Hot(h, "welcome", Type::kWelcome, Body(Welcome{"spare-host", 10, 30, 7701}));
  Hot(h, "error", Type::kError, Body(ErrorMsg{spare::Code::kBadMessage, "Commit.parts: 0"}));
  Hot(h, "reserve", Type::kReserve,
      Body(Reserve{"kv1", {1 << 20, 4096}, 4, 256 * 1024, R"({"argv":["spare-kv"]})"}));
  Hot(h, "reserved", Type::kReserved, Body(Reserved{0x7f0000000000, 1 << 20, "rkey", 9}));
  Hot(h, "commit", Type::kCommit, Body(Commit{1, 2}));
  Hot(h, "heartbeat", Type::kHeartbeat, Body(Heartbeat{123456789, 1 << 20}));
  Hot(h, "fenced", Type::kFenced, Body(Fenced{4, "failed over to the spare host"}));
  Hot(h, "copy", Type::kCopy, Body(Copy{17}));
  Hot(h, "copykeys", Type::kCopyKeys, Body(CopyKeys{{{0x7f0000000000, 1 << 20, "rkey"}}}));
  Hot(h, "copydone", Type::kCopyDone, Body(CopyDone{1 << 20, "rec-17"}));
  Hot(h, "leaving", Type::kLeaving, Body(Leaving{10000}));
  Hot(h, "move", Type::kMove, Body(Move{"maintenance"}));
  {
    std::vector<std::byte> bytes(300, std::byte{0x5a});
    auto f = EncodeData(Header{Type::kData, 0, 7, 3, 42}, kStagingSpace, 4096, bytes);
    Write(h, "data", f.data(), f.size());
  }
  const std::string i = root + "/fuzz_ipc_wire";
  int n = 0;
  for (auto type : {spare::ipc::MsgType::kOk, spare::ipc::MsgType::kFailover}) {
    spare::ipc::Message m;
    m.type = type;
    m.generation = 5;
    m.body = {{"id", "kv1"}, {"epoch", 12}, {"reason", "maintenance"}};
    m.blob = n ? "record" : "";
    auto f = spare::ipc::Encode(m);
    if (!f.ok()) return 1;
    Write(i, "msg" + std::to_string(n++), f->data(), f->size());
  }
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
