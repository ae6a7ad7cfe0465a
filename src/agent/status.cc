#include "agent/status.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

#include "agent/agent.h"
#include "agent/hot_link.h"
#include "ipc/body.h"

namespace spare::agent {
namespace {

// What the NOTE column says about an instance that is not settled.
std::string Note(const Instance& inst) {
  const InstanceRecord& r = inst.rec;
  auto since = [&] {
    char buf[32];
    std::snprintf(
        buf, sizeof(buf), "%.0f s",
        std::chrono::duration<double>(std::chrono::steady_clock::now() - inst.launched_at).count());
    return std::string(buf);
  };
  switch (r.state) {
    case InstanceState::kStarting:
      return "launched " + since() + " ago, not attached yet";
    case InstanceState::kRestarting:
      return "restarting after " + inst.last_exit;
    case InstanceState::kAdopting:
      return "adopted; waiting for it to reattach";
    case InstanceState::kStopping:
      return inst.moving ? "moving to the spare host" : "SIGTERM sent";
    case InstanceState::kRunning:
      if (!inst.conn.valid()) return "not connected to the agent";
      if (inst.failover && inst.failover->attach_ms) {
        const Instance::Failover& f = *inst.failover;
        char buf[224];
        std::snprintf(buf, sizeof(buf),
                      "failed over from %s at epoch %llu: detection %.0f (%s), fencing %.2f, "
                      "launch %.1f, attach %.1f ms",
                      f.from.c_str(), static_cast<unsigned long long>(f.epoch), f.detection_ms,
                      f.detected_by.empty() ? "?" : f.detected_by.c_str(),
                      f.fencing_ms, f.launch_ms, *f.attach_ms);
        return buf;
      }
      return std::string();
    default:
      return r.reason;
  }
}

std::string LabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

struct Metric {
  const char* name;
  const char* type;
  const char* help;
  const char* field;  // nullptr: 1 while "state" is "running"
  double scale = 1.0;
};

const Metric kMetrics[] = {
    {"spare_instance_up", "gauge", "1 while the instance runs and is attached to its agent.",
     nullptr},
    {"spare_epochs_applied_total", "counter", "Epochs applied to the committed image.",
     "epochs_applied"},
    {"spare_bytes_applied_total", "counter", "Page bytes applied to the committed image.",
     "bytes_applied"},
    {"spare_apply_seconds_total", "counter", "Time the agent spent applying epochs.",
     "apply_seconds"},
    {"spare_restarts_total", "counter", "Local restarts after crashes.", "restarts"},
    {"spare_last_restart_seconds", "gauge",
     "Crash detection to re-attach of the last restart (0: none yet).", "last_restart_ms", 1e-3},
    {"spare_instance_epoch", "gauge", "Newest epoch in the committed image.", "epoch"},
    {"spare_instance_released_epoch", "gauge",
     "Newest epoch whose staging slots the instance may reuse.", "released_epoch"},
    {"spare_instance_durable_epoch", "gauge",
     "Newest durable epoch: outputs up to it may leave the instance.", "durable_epoch"},
    {"spare_epochs_queued", "gauge", "Epochs handed over and not yet durable.", "epochs_queued"},
    {"spare_apply_retries_total", "counter",
     "Epoch writes started again after a failed write into the committed image.", "apply_retries"},
    {"spare_apply_seconds_max", "gauge", "Longest apply of one epoch.", "apply_seconds_max"},
    {"spare_config_hits_total", "counter",
     "Configuration checkpoint lookups that found the saved value (discovery skipped).",
     "config_hits"},
    {"spare_config_stale_total", "counter",
     "Configuration checkpoint lookups whose fingerprint had changed (discovery redone).",
     "config_stale"},
    {"spare_config_missing_total", "counter",
     "Configuration checkpoint lookups of keys never saved.", "config_missing"},
    {"spare_standby_epoch", "gauge",
     "Policy hot: newest epoch the standby acknowledged (applied to its replica).",
     "standby_epoch"},
    {"spare_ship_errors_total", "counter",
     "Policy hot: epochs or messages to the standby that failed or were refused.",
     "ship_errors"},
    {"spare_shipped_epochs_total", "counter",
     "Policy hot: epochs shipped to the standby (puts or Data messages, then Commit).",
     "shipped_epochs"},
    {"spare_ship_bytes_total", "counter",
     "Policy hot: bytes handed to UCX for those epochs (slot bytes, Data headers, Commit); full "
     "copies are spare_full_copy_bytes_total.",
     "ship_bytes"},
    {"spare_full_copies_total", "counter",
     "Policy hot: full copies of the image to the standby completed (new or restarted "
     "standby, reconnect after a gap).",
     "full_copies"},
    {"spare_full_copy_bytes_total", "counter",
     "Policy hot: bytes those full copies shipped (only pages ever written).", "full_copy_bytes"},
    {"spare_instance_unprotected_seconds", "gauge",
     "Policy hot with --on-standby-loss=continue: how long the instance has run UNPROTECTED "
     "(no standby acknowledging; outputs released after the local apply alone); 0 while "
     "protected or holding.",
     "unprotected_s"},
    {"spare_unprotected_periods_total", "counter",
     "Policy hot with --on-standby-loss=continue: times the instance went on unprotected.",
     "unprotected_periods"},
};

Result<double> MetricValue(const Metric& m, const ipc::Body& inst) {
  if (!m.field) {
    SPARE_ASSIGN_OR_RETURN(std::string state, inst.String("state"));
    return state == "running" ? 1.0 : 0.0;
  }
  // Nullable fields (last_restart_ms) read as 0 while null.
  SPARE_ASSIGN_OR_RETURN(std::optional<double> v, inst.NullableNumber(m.field));
  if (!v && !inst.Has(m.field)) return inst.Number(m.field).status();  // names it missing
  return v.value_or(0.0) * m.scale;
}

}  // namespace

static std::string CopyProgress(const Instance::FullCopy& c) {
  using P = Instance::FullCopy::Phase;
  if (c.phase == P::kQuiescing || c.phase == P::kKeys) return "full copy starting";
  char buf[96];
  std::snprintf(buf, sizeof(buf), "full copy %d%% (%.1f of %.1f MiB)",
                c.total ? static_cast<int>(100 * c.done / c.total) : 100,
                static_cast<double>(c.done) / (1 << 20), static_cast<double>(c.total) / (1 << 20));
  return buf;
}

nlohmann::json InstanceStatusJson(const Instance& inst, bool standby_suspected) {
  const InstanceRecord& r = inst.rec;
  nlohmann::json regions = nlohmann::json::array();
  for (const RegionRecord& g : r.regions)
    regions.push_back({{"name", g.name}, {"address", g.address}, {"size", g.size}});
  nlohmann::json failover;  // null unless a replacement from a replica
  if (inst.failover) {
    const Instance::Failover& f = *inst.failover;
    failover = {{"from", f.from},
                {"standby", f.standby},
                {"epoch", f.epoch},
                {"detection_ms", f.detection_ms},
                {"detected_by", f.detected_by},
                {"fencing_ms", f.fencing_ms},
                {"launch_ms", f.launch_ms},
                {"attach_ms", f.attach_ms ? nlohmann::json(*f.attach_ms) : nlohmann::json()}};
  }
  return {{"id", r.spec.id},
          {"pid", r.pid},
          {"failover", failover},
          {"fenced", r.fenced},
          {"policy", r.spec.policy},
          {"state", std::string(StateName(r.state))},
          {"epoch", r.epoch},
          {"released_epoch", inst.epochs.released()},
          {"durable_epoch", inst.epochs.durable()},
          {"epochs_queued", inst.epochs.in_flight()},
          {"image_torn", r.image_torn},
          {"generation", r.generation},
          {"restarts", r.restarts},
          {"last_restart_ms",
           inst.last_restart_ms ? nlohmann::json(*inst.last_restart_ms) : nlohmann::json()},
          {"tracker", inst.tracker},
          {"reason", Note(inst)},
          {"regions", regions},
          {"epochs_applied", inst.epochs_applied},
          {"bytes_applied", inst.bytes_applied},
          {"apply_seconds", inst.apply_seconds},
          {"apply_seconds_max", inst.apply_seconds_max},
          {"apply_retries", inst.apply_retries},
          {"config_hits", inst.config_hits},
          {"config_stale", inst.config_stale},
          {"config_missing", inst.config_missing},
          {"config_stale_keys", inst.config_stale_keys},
          {"standby", r.spec.policy != "hot" ? "-"
                      : r.fenced             ? "fenced (failed over elsewhere)"
                      : inst.unprotected     ? "UNPROTECTED (standby lost; continuing)"
                      : standby_suspected    ? "standby unreachable (outputs held)"
                      : inst.copy            ? CopyProgress(*inst.copy)
                      : inst.standby_blocked ? "blocked (full copy failed; tried again shortly)"
                      : inst.standby_handle != 0 ? "protected"
                                                 : "waiting for the standby"},
          {"full_copies", inst.full_copies},
          {"full_copy_bytes", inst.full_copy_bytes},
          {"standby_epoch", inst.standby_acked},
          {"unprotected", inst.unprotected},
          {"unprotected_s",
           inst.unprotected ? std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                            inst.unprotected_since)
                                  .count()
                            : 0.0},
          {"unprotected_periods", inst.unprotected_periods},
          {"ship_errors", inst.ship_errors},
          {"shipped_epochs", inst.shipped_epochs},
          {"ship_bytes", inst.ship_bytes}};
}

Result<std::string> MetricsText(const nlohmann::json& status) {
  ipc::Body body(status, "Status");
  SPARE_ASSIGN_OR_RETURN(const nlohmann::json* list, body.Array("instances"));
  std::vector<ipc::Body> instances;
  std::vector<std::string> ids;
  for (size_t i = 0; i < list->size(); ++i) {
    instances.emplace_back((*list)[i], "Status: instances[" + std::to_string(i) + "]");
    SPARE_ASSIGN_OR_RETURN(std::string id, instances.back().String("id"));
    ids.push_back(LabelValue(id));
  }
  std::string out;
  char line[512];
  for (const Metric& m : kMetrics) {
    out += std::string("# HELP ") + m.name + " " + m.help + "\n";
    out += std::string("# TYPE ") + m.name + " " + m.type + "\n";
    for (size_t i = 0; i < instances.size(); ++i) {
      SPARE_ASSIGN_OR_RETURN(double value, MetricValue(m, instances[i]));
      // `id` repeats the instance label: Prometheus sets its own `instance`
      // label (the scrape target) and renames ours to exported_instance.
      std::snprintf(line, sizeof(line), "%s{instance=\"%s\",id=\"%s\"} %.10g\n", m.name,
                    ids[i].c_str(), ids[i].c_str(), value);
      out += line;
    }
  }
  return out;
}

// This host's IPv4 addresses (loopback only when there is nothing else):
// where clients reach the instances that run here.
static std::vector<std::string> HostAddresses() {
  std::vector<std::string> out, loopback;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (!::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text))) continue;
    (ntohl(in->sin_addr.s_addr) >> 24 == 127 ? loopback : out).push_back(text);
  }
  ::freeifaddrs(list);
  return out.empty() ? loopback : out;
}

nlohmann::json Agent::StatusJson(size_t budget) const {
  nlohmann::json instances = nlohmann::json::array();
  const auto now = std::chrono::steady_clock::now();
  const bool suspected = hot_ && StandbyUnreachable(now);
  // Every live instance; then the ended ones (stopped, exited, failed) as
  // long as the answer stays within `budget` bytes (an agent that ran
  // hundreds of instances would otherwise answer nothing at all: the
  // agent protocol's bodies are at most 64 KiB). The rest are counted.
  size_t used = 4096;  // the agent's own part, generously
  uint64_t omitted = 0;
  std::vector<nlohmann::json> ended;
  for (const auto& [id, inst] : instances_) {
    nlohmann::json j = InstanceStatusJson(*inst, suspected);
    if (!IsLive(inst->rec.state)) {
      ended.push_back(std::move(j));
      continue;
    }
    used += j.dump().size() + 1;
    instances.push_back(std::move(j));
  }
  for (nlohmann::json& j : ended) {
    const size_t n = j.dump().size() + 1;
    if (budget != 0 && used + n > budget) {
      ++omitted;
      continue;
    }
    used += n;
    instances.push_back(std::move(j));
  }
  double uptime = std::chrono::duration<double>(now - started_at_).count();
  nlohmann::json standby;  // null without --standby
  if (hot_)
    standby = {{"address", hot_->host + ":" + std::to_string(hot_->port)},
               {"name", hot_->standby_name},
               {"connected", hot_->welcomed},
               {"suspected", suspected},
               {"heartbeat_ms", hot_->heartbeat_ms},
               {"timeout_ms", hot_->timeout_ms},
               {"on_standby_loss", options_.continue_on_standby_loss ? "continue" : "hold"},
               {"suspicions", hot_->suspicions},
               {"reconnects", hot_->reconnects}};
  return {{"agent",
           {{"dir", options_.dir},
            {"socket", socket_path()},
            {"pid", ::getpid()},
            {"uptime_s", uptime},
            {"metrics_port", options_.metrics_port},
            {"metrics_host", options_.metrics_host},
            {"addresses", HostAddresses()},
            {"standby", standby},
            {"instances_omitted", omitted}}},
          {"instances", instances}};
}

}  // namespace spare::agent
