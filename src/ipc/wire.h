// ipc/wire.h — the local control protocol between instances, the CLI and
// the agent, over the agent's unix socket (SOCK_SEQPACKET: one frame per
// packet, file descriptors ride along with SCM_RIGHTS).
//
// Frame (little endian; byte layout in docs/WIRE.md):
//   u32 magic 'SPRE' | u16 version | u16 type | u32 json_len | u32 blob_len
//   | u64 generation | u64 checksum | json bytes | blob bytes
// checksum = XXH64 over the first 24 header bytes, the json and the blob.
// Decode() trusts nothing: magic, version, type, both lengths against the
// packet size and limits, the checksum, and that json parses as an object.
//
// Threading: free functions; no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "spare/status.h"

namespace spare::ipc {

inline constexpr uint32_t kMagic = 0x45525053;  // "SPRE"
inline constexpr uint16_t kVersion = 2;         // 2: Applied split into Released and Durable
inline constexpr size_t kHeaderSize = 32;
inline constexpr size_t kMaxJson = 64 * 1024;
inline constexpr size_t kMaxBlob = 128 * 1024;
inline constexpr size_t kMaxFds = 16;
inline constexpr size_t kMaxFrame = kHeaderSize + kMaxJson + kMaxBlob;

// Requests name what they ask; kOk / kError answer the request before them
// on the same socket; kReleased and kDurable are unsolicited (agent →
// instance), and so is a kError naming an epoch.
enum class MsgType : uint16_t {
  kOk = 1,       // body: request-specific result
  kError = 2,    // body: {code: "<CodeName>", message}
  kAttach = 10,  // instance → agent, see docs/WIRE.md for every body
  kRegion = 11,
  kCommit = 12,
  // 13 was Applied (version 1).
  kConfigGet = 14,
  kConfigPut = 15,
  kReleased = 16,  // agent → instance: slots of epochs <= N are free again
  kDurable = 17,   // agent → instance: epochs <= N are durable; outputs may leave
  kRun = 20,       // CLI → agent
  kStatus = 21,
  kStop = 22,
  kTakeover = 23,  // standby → the spare host's agent: launch a replacement from this replica
  kFailover = 24,  // CLI or instance → agent: move a hot instance to the spare host now
};
inline constexpr uint16_t kMaxMsgType = 24;
const char* MsgTypeName(MsgType type);

struct Message {
  MsgType type = MsgType::kOk;
  uint64_t generation = 0;
  nlohmann::json body = nlohmann::json::object();
  std::string blob;
  std::vector<UniqueFd> fds;  // received or to send (ownership stays with the message)
};

// Frame bytes (without fds). kInvalidArgument if json/blob exceed limits.
Result<std::string> Encode(const Message& msg);
// Parses one frame; fds are not touched. kBadMessage names what was wrong.
Result<Message> Decode(std::span<const std::byte> frame);

// Sends msg (and its fds) as one packet. Blocks if the socket is blocking.
// kUnavailable if the peer is gone.
Status Send(int sock, const Message& msg);
// The one sendmsg of an encoded frame and its fds (SCM_RIGHTS), shared by
// Send and the agent's non-blocking send queue. dont_wait adds
// MSG_DONTWAIT. true: sent; false: the socket would block (nothing sent);
// kUnavailable: peer gone; kInvalidArgument: more than kMaxFds fds.
Result<bool> SendFrame(int sock, std::string_view frame, std::span<const UniqueFd> fds,
                       bool dont_wait);
// Receives one packet. nullopt: nothing there now (nonblocking socket, or
// dont_wait). kUnavailable: peer closed. kBadMessage: bad frame (its fds
// are closed).
Result<std::optional<Message>> Receive(int sock, bool dont_wait = false);

// Reply helpers: an Ok carrying `body`; an Error carrying `status`.
Message OkMessage(nlohmann::json body);
Message ErrorMessage(const Status& status);
// kOk → Ok; kError → the Status it carries; anything else → kBadMessage.
Status StatusOf(const Message& reply);

// Unix SOCK_SEQPACKET helpers. `path` must fit sockaddr_un.
Result<UniqueFd> Listen(const std::string& path);
Result<UniqueFd> Connect(const std::string& path);

}  // namespace spare::ipc
