// Socket I/O of the agent: reading frames, dispatching them to handlers,
// and a per-connection send queue so a slow reader never blocks the loop.
#include <spdlog/spdlog.h>
#include <sys/epoll.h>

#include "agent/agent.h"

namespace spare::agent {
namespace {

// A client that lets this many replies pile up is not reading: drop it.
constexpr size_t kMaxQueued = 4096;

}  // namespace

void Agent::ReadConn(int fd, size_t max_messages) {
  for (size_t i = 0; i < max_messages; ++i) {
    auto it = conns_.find(fd);
    if (it == conns_.end() || it->second.dead) return;
    auto received = ipc::Receive(fd);
    if (!received.ok()) {
      if (received.status().code() == Code::kBadMessage) {
        // SEQPACKET keeps frame boundaries: one bad frame does not spoil
        // the next, so answer and keep the connection.
        spdlog::warn("bad frame from pid {}: {}", it->second.peer_pid,
                     received.status().ToString());
        Send(it->second, ipc::ErrorMessage(received.status()));
        continue;
      }
      if (received.status().code() != Code::kUnavailable)
        spdlog::warn("reading from pid {}: {}", it->second.peer_pid, received.status().ToString());
      CloseConn(fd);
      return;
    }
    if (!received->has_value()) return;  // nothing more for now
    ipc::Message msg = std::move(**received);
    std::optional<ipc::Message> reply = Dispatch(it->second, msg);
    auto again = conns_.find(fd);
    if (reply && again != conns_.end()) Send(again->second, std::move(*reply));
  }
}

std::optional<ipc::Message> Agent::Dispatch(Conn& conn, ipc::Message& msg) {
  using ipc::MsgType;
  try {
    switch (msg.type) {
      case MsgType::kAttach:
        return OnAttach(conn, msg);
      case MsgType::kRegion:
        return OnRegion(conn, msg);
      case MsgType::kCommit:
        return OnCommit(conn, msg);
      case MsgType::kConfigGet:
        return OnConfigGet(conn, msg);
      case MsgType::kConfigPut:
        return OnConfigPut(conn, msg);
      case MsgType::kRun:
        return OnRun(conn, msg);
      case MsgType::kStatus:
        return OnStatus(conn, msg);
      case MsgType::kStop:
        return OnStop(conn, msg);
      case MsgType::kTakeover:
        return OnTakeover(conn, msg);
      case MsgType::kFailover:
        return OnFailover(conn, msg);
      default:
        break;
    }
    return ipc::ErrorMessage(Status(Code::kBadMessage, std::string("unexpected ") +
                                                           ipc::MsgTypeName(msg.type) +
                                                           ": the agent only takes requests"));
  } catch (const std::exception& e) {
    // Handlers do not throw; this is the last line that keeps one bad
    // message from taking the agent (and every instance's epochs) down.
    spdlog::error("{} from pid {} raised {}; refused", ipc::MsgTypeName(msg.type), conn.peer_pid,
                  e.what());
    return ipc::ErrorMessage(Status(Code::kBadMessage, std::string(ipc::MsgTypeName(msg.type)) +
                                                           ": malformed body (" + e.what() + ")"));
  }
}

void Agent::Send(Conn& conn, ipc::Message msg) {
  if (conn.dead) return;
  if (const Instance* inst = Find(conn.instance_id)) msg.generation = inst->rec.generation;
  Result<std::string> bytes = Status(Code::kInternal, "not encoded");
  try {
    bytes = ipc::Encode(msg);
  } catch (const std::exception& e) {
    bytes = Status(Code::kInternal, e.what());
  }
  if (!bytes.ok()) {
    spdlog::error("cannot encode {} for pid {}: {}", ipc::MsgTypeName(msg.type), conn.peer_pid,
                  bytes.status().ToString());
    if (msg.type != ipc::MsgType::kError)
      Send(conn, ipc::ErrorMessage(bytes.status().With("encoding the answer")));
    return;
  }
  if (conn.out.size() >= kMaxQueued) {
    spdlog::warn("pid {} does not read its answers ({} queued); closing its connection",
                 conn.peer_pid, conn.out.size());
    conn.dead = true;
    return;
  }
  conn.out.push_back({std::move(bytes).value(), std::move(msg.fds)});
  FlushConn(conn);
}

void Agent::SendTo(ConnRef ref, ipc::Message msg) {
  if (Conn* conn = ConnOf(ref)) Send(*conn, std::move(msg));
}

void Agent::FlushConn(Conn& conn) {
  while (!conn.out.empty() && !conn.dead) {
    auto sent = ipc::SendFrame(conn.fd.get(), conn.out.front().bytes, conn.out.front().fds,
                               /*dont_wait=*/true);
    if (!sent.ok()) {
      conn.dead = true;  // closed in SweepDeadConns (or by its own EOF)
      return;
    }
    if (!*sent) break;
    conn.out.pop_front();
  }
  bool want = !conn.out.empty() && !conn.dead;
  if (want != conn.want_write) {
    conn.want_write = want;
    ModifyWatch(conn.watch, conn.fd.get(), EPOLLIN | (want ? uint32_t{EPOLLOUT} : 0u));
  }
}

Agent::Conn* Agent::ConnOf(ConnRef ref) {
  if (!ref.valid()) return nullptr;
  auto it = conns_.find(ref.fd);
  if (it == conns_.end() || it->second.serial != ref.serial) return nullptr;
  return &it->second;
}

void Agent::CloseConn(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& conn = it->second;
  ConnRef ref = RefOf(conn);
  if (Instance* inst = FindMutable(conn.instance_id); inst && inst->conn == ref) {
    inst->conn = {};
    // Usually the process is exiting (its pidfd reports that next); a live
    // libspare reconnects with a reattach.
    spdlog::debug("instance {}: pid {} closed its agent connection", inst->rec.spec.id,
                  inst->rec.pid);
  }
  for (auto& [id, inst] : instances_) {
    if (inst->pending_run == ref) inst->pending_run = {};
    std::erase(inst->stop_waiters, ref);
  }
  RemoveWatch(conn.watch, fd);
  conns_.erase(it);
}

void Agent::SweepDeadConns() {
  std::vector<int> dead;
  for (auto& [fd, conn] : conns_)
    if (conn.dead) dead.push_back(fd);
  for (int fd : dead) CloseConn(fd);
}

}  // namespace spare::agent
