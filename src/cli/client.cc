#include "cli/client.h"

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace spare::cli {

Result<std::string> AgentDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("SPARE_AGENT");
  if (env && *env) return std::string(env);
  return Status(Code::kInvalidArgument,
                "no agent given: pass --agent DIR or set SPARE_AGENT (the directory an agent was "
                "started with, `spare agent --dir DIR`)");
}

Result<ipc::Message> Call(const std::string& agent_dir, const ipc::Message& request, int timeout_ms,
                          bool* timed_out) {
  if (timed_out) *timed_out = false;
  std::string path = agent_dir + "/agent.sock";
  auto sock = ipc::Connect(path);
  if (!sock.ok()) {
    if (sock.status().code() != Code::kUnavailable) return sock.status();
    return Status(Code::kUnavailable, "cannot reach an agent at " + path +
                                          " (nobody is listening); start one with `spare agent "
                                          "--dir " +
                                          agent_dir + "`");
  }
  Status st = ipc::Send(sock->get(), request);
  if (!st.ok()) return st.With("sending " + std::string(ipc::MsgTypeName(request.type)));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      if (timed_out) *timed_out = true;
      return Status(Code::kUnavailable, "timed out waiting for the agent's answer");
    }
    pollfd p{sock->get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
    if (n <= 0) continue;
    auto reply = ipc::Receive(sock->get());
    if (!reply.ok()) {
      if (reply.status().code() == Code::kUnavailable)
        return Status(Code::kUnavailable,
                      "the agent closed the connection before answering "
                      "(did it stop?)");
      return reply.status();
    }
    if (!reply->has_value()) continue;
    ipc::Message m = std::move(**reply);
    SPARE_RETURN_IF_ERROR(ipc::StatusOf(m));
    return m;
  }
}

int Fail(const Status& status) {
  std::fprintf(stderr, "spare: %s\n", status.ToString().c_str());
  bool usage = status.code() == Code::kInvalidArgument || status.code() == Code::kUnsupported;
  return usage ? 2 : 1;
}

}  // namespace spare::cli
