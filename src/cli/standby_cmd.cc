// `spare standby`: runs the spare host's daemon in the foreground.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "agent/options.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "common/fd.h"
#include "standby/standby.h"

namespace spare::cli {
namespace {

struct StandbyFlags {
  std::string listen = "127.0.0.1:7700";
  std::string name;
  std::string agent;
  uint32_t heartbeat_ms = 10;
  uint32_t timeout_ms = 30;
  uint16_t live_port = 0;
  std::string error_mode = "none";
  std::string dir;
};

int RunStandby(const StandbyFlags& flags) {
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  standby::StandbyOptions o;
  auto where = net::ParseAddress(flags.listen, "--listen", /*allow_any_port=*/true);
  if (!where.ok()) return Fail(where.status());
  o.host = where->host;
  o.port = where->port;
  if (!flags.name.empty()) o.name = flags.name;
  o.agent_dir = flags.agent;
  o.dir = flags.dir;
  o.heartbeat_ms = flags.heartbeat_ms;
  o.timeout_ms = flags.timeout_ms;
  o.live_port = flags.live_port;
  o.error_mode = flags.error_mode == "none"   ? net::ErrorMode::kNone
                 : flags.error_mode == "peer" ? net::ErrorMode::kPeer
                                              : net::ErrorMode::kAuto;
  // SIGTERM/SIGINT end the loop; blocked before any thread exists.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  auto s = standby::Standby::Create(o);
  if (!s.ok()) {
    std::fprintf(stderr, "spare: standby not started: %s\n", s.status().ToString().c_str());
    return 1;
  }
  UniqueFd sig(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = (*s)->event_fd();
  ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, (*s)->event_fd(), &ev);
  ev.data.fd = sig.get();
  ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, sig.get(), &ev);
  spdlog::info("spare standby {}: listening on {}:{}, liveness port {} (UCX error handling: {}; "
               "heartbeat {} ms, timeout {} ms; replacements launched by {})",
               o.name, o.host, (*s)->port(), (*s)->live_port(), net::ErrorModeName(o.error_mode),
               o.heartbeat_ms,
               o.timeout_ms, o.agent_dir.empty() ? "nobody (no --agent)" : "agent " + o.agent_dir);
  if (o.agent_dir.empty())
    spdlog::warn("spare standby: no --agent: an instance whose host fails is fenced but not "
                 "launched anywhere");
  for (;;) {
    (*s)->Progress();
    epoll_event got[4];
    int n = ::epoll_wait(ep.get(), got, 4, 1000);
    if (n < 0 && errno != EINTR) return Fail(Status::FromErrno("epoll_wait", errno));
    for (int i = 0; i < n; ++i) {
      if (got[i].data.fd != sig.get()) continue;
      signalfd_siginfo info{};
      if (::read(sig.get(), &info, sizeof(info)) == sizeof(info)) {
        spdlog::info("spare standby: got {}, stopping; its {} replica(s) are dropped (agents "
                     "resync with a full copy when a standby is back)",
                     sigabbrev_np(static_cast<int>(info.ssi_signo)), (*s)->Areas().size());
        return 0;
      }
    }
  }
}

}  // namespace

Command AddStandbyCommand(CLI::App& app) {
  auto flags = std::make_shared<StandbyFlags>();
  CLI::App* sub = app.add_subcommand(
      "standby",
      "Run the spare host's daemon in the foreground (policy hot). It listens for agents "
      "(UCX), keeps for each protected instance a replica of its regions and a staging area the "
      "agent writes epochs into, applies each committed epoch to the replica after checking it, "
      "and acknowledges it; only then are the instance's outputs released. Heartbeats go both "
      "ways, on the UCX connection and on a liveness TCP connection of their own (--live-port); "
      "an agent silent on both for --timeout-ms, or whose process is gone (its liveness "
      "connection closed without a goodbye), is suspected and each of its instances fails "
      "over: the standby fences the old owner (nothing it sends is acknowledged again, so it "
      "can release no output) and hands the replica to the spare host's agent (--agent), which "
      "launches the instance at the same virtual addresses from the last acknowledged epoch. "
      "Replicas live in this process: a restarted standby starts empty. Logs go to stderr; "
      "SIGTERM or Ctrl-C stops it.");
  sub->add_option("--listen", flags->listen, "HOST:PORT to listen on for agents")
      ->capture_default_str();
  sub->add_option("--name", flags->name, "name in logs and in what agents see (default standby)");
  sub->add_option("--agent", flags->agent,
                  "DIR of the agent on this host that launches replacements (`spare agent --dir "
                  "DIR`); without it a failed instance is fenced but not launched");
  sub->add_option("--heartbeat-ms", flags->heartbeat_ms,
                  "how often heartbeats go to every agent (agents send theirs at the same rate)")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  sub->add_option("--timeout-ms", flags->timeout_ms,
                  "silence after which an agent (and so each instance it protects here) is "
                  "suspected and failed over; must exceed --heartbeat-ms")
      ->capture_default_str()
      ->check(CLI::Range(2, 600000));
  sub->add_option("--live-port", flags->live_port,
                  "TCP port of the liveness channel on the --listen host (agents learn it when "
                  "they connect; open it beside the listen port in a firewall). 0: any free port")
      ->capture_default_str();
  sub->add_option("--dir", flags->dir,
                  "where the standby keeps its state (DIR/standby.json, versioned): which owners "
                  "it fenced, so they stay fenced after a restart. Replicas are not kept: after a "
                  "restart each instance gets a full copy");
  sub->add_option("--error-mode", flags->error_mode,
                  "UCX error handling of agents' connections; the agents' --standby-error-mode "
                  "must agree. none (default): spare's heartbeats alone judge peers. peer: UCX "
                  "also reports a dead peer (drops shared-memory lanes). auto: NONE for an agent "
                  "on this host when UCX_TLS allows shared memory, PEER otherwise")
      ->check(CLI::IsMember({"auto", "none", "peer"}))
      ->capture_default_str();
  sub->footer(
      "Example:\n"
      "  spare agent --dir /run/spare-spare &     # the spare host's own agent\n"
      "  UCX_TLS=tcp spare standby --listen 0.0.0.0:7700 --live-port 7701 \\\n"
      "      --agent /run/spare-spare --dir /var/lib/spare-standby &\n"
      "  # on each primary host:\n"
      "  spare agent --dir /run/spare --standby sparehost:7700 &\n"
      "  spare run --agent /run/spare --id kv1 --policy hot -- ./spare-kv --port 7001");
  return {sub, [flags] { return RunStandby(*flags); }};
}

}  // namespace spare::cli
