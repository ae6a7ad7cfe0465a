// make_seeds: writes the seed corpora in fuzz/corpus/ (valid frames of every
// kind, so the fuzzers start from what the daemons really send). Run it from
// the repository root after a change to either wire format:
//   build-fuzz/bin/make_seeds fuzz/corpus
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/state.h"
#include "epoch/staging.h"
#include "hot/wire.h"
#include "ipc/wire.h"
#include "standby/standby.h"

namespace {

void Write(const std::string& dir, const std::string& name, const void* p, size_t n) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + name, std::ios::binary).write(static_cast<const char*>(p), n);
}

void Text(const std::string& dir, const std::string& name, char first, const std::string& text) {
  std::string s = std::string(1, first) + text;
  Write(dir, name, s.data(), s.size());
}

// Valid single-part epochs as FillEpoch writes them, then the slot's used
// bytes as an input of fuzz_staging (flags 0: slot 0, one part; 16: sealed).
void Staging(const std::string& dir) {
  using namespace spare::epoch;
  std::vector<std::byte> area(StagingBytes(3, kMinSlotSize));
  StagingView view{area.data(), area.size(), 3, kMinSlotSize};
  InitStaging(view);
  std::vector<std::byte> src(8192);
  for (size_t k = 0; k < src.size(); ++k) src[k] = std::byte(k * 7);
  const std::vector<std::vector<DirtyRun>> epochs = {
      {{0, src.data(), 0, 2048}},
      {{0, src.data(), 100, 24}, {1, src.data() + 50, 1 << 19, 300}, {2, src.data(), 4000, 96}},
      {{1, src.data(), (1 << 20) - 512, 512}},
  };
  int n = 0;
  for (const auto& runs : epochs) {
    const std::string record = "spare-kv commands=" + std::to_string(n);
    EpochPlan plan = PlanEpoch(view, runs, record.size());
    FillEpoch(view, 7, 5, 0, plan, runs,
              std::as_bytes(std::span(record.data(), record.size())));
    const RegionTarget regions[] = {{-1, 64 * 1024, nullptr}, {-1, 1 << 20, nullptr},
                                    {-1, 4096, nullptr}};
    if (!ValidateEpoch(view, 7, 5, 0, plan.parts, regions).ok()) {
      std::fprintf(stderr, "make_seeds: staging seed %d does not validate\n", n);
      std::exit(1);
    }
    SlotHeader h;
    std::memcpy(&h, view.slot(0), sizeof(h));
    for (char flags : {char(0), char(16)}) {
      std::string in(1, flags);
      in.append(reinterpret_cast<const char*>(view.slot(0)), h.used);
      Write(dir, "epoch" + std::to_string(n) + (flags ? "-sealed" : ""), in.data(), in.size());
    }
    ++n;
  }
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
  Staging(root + "/fuzz_staging");
  {
    spare::agent::AgentStateValue v;
    spare::agent::InstanceRecord r;
    r.spec.id = "kv1";
    r.spec.policy = "hot";
    r.spec.argv = {"/usr/bin/spare-kv", "--port", "7001"};
    r.spec.env = {"K=V"};
    r.spec.cwd = "/";
    r.state = spare::agent::InstanceState::kRunning;
    r.pid = 1234;
    r.generation = 3;
    r.epoch = 99;
    r.regions = {{"heap", 0, 0x7f0000000000, 1 << 20}, {"index", 1, 0x7f0000200000, 4096}};
    v.instances.push_back(r);
    r.spec.id = "kv2";
    r.state = spare::agent::InstanceState::kFailed;
    r.fenced = true;
    r.reason = "fenced by standby spare-host";
    r.pid = 0;
    r.regions = {};
    v.instances.push_back(r);
    Text(root + "/fuzz_saved_state", "state.json", 0, spare::agent::EncodeState(v));
    spare::standby::Tombstones t = {{"kv1", {4, "agent:/run/spare"}}, {"kv2", {2, "agent:/x"}}};
    Text(root + "/fuzz_saved_state", "standby.json", 1,
         spare::standby::EncodeStandbyState("spare-host", t));
  }
  {
    const std::string c = root + "/fuzz_config";
    Text(c, "agent.toml", 0,
         "slot_count = 16\nslot_size = \"8M\"\nmax_restarts = 5\nrestart_window_s = 60\n"
         "metrics_host = \"127.0.0.1\"\nmetrics_port = 9464\n");
    Text(c, "agent-bad.toml", 0, "slot_size = \"8Q\"\n[table]\nx = 1\n");
    Text(c, "kv.conf", 1,
         "# spare-kv\nmaxclients 100\nhz 10\nmaxmemory 64mb\nrequirepass \"s3cret word\"\n"
         "proto-max-bulk-len 1m\nclient-query-buffer-limit 2gb\nsave \"\"\n");
    Text(c, "kv-bad.conf", 1, "maxmemory lots\nunknown-directive 1\n");
  }
  {
    const std::string r = root + "/fuzz_resp";
    Text(r, "set", 3, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n");
    Text(r, "pipeline", 1,
         "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n*5\r\n$4\r\nMSET\r\n"
         "$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n");
    Text(r, "inline", 0, "PING\r\nSET k \"a b\"\r\nDEL k\n");
    Text(r, "bad", 5, "*2\r\n$-5\r\n*x\r\n$99999999999\r\n");
  }
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
