// info.cc — the INFO command (Redis-like text, plus a "# Spare" section).
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "resp.h"

namespace kv {
namespace {

constexpr std::string_view kSections[] = {"server",   "clients", "memory",    "stats",
                                          "keyspace", "spare",   "checkpoint"};

std::string Human(uint64_t bytes) {
  const char* units = "BKMGT";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f%c", v, units[u]);
  }
  return buf;
}

void Field(std::string* out, std::string_view name, uint64_t value) {
  out->append(name);
  out->push_back(':');
  out->append(std::to_string(value));
  out->append("\r\n");
}

void Field(std::string* out, std::string_view name, std::string_view value) {
  out->append(name);
  out->push_back(':');
  out->append(value);
  out->append("\r\n");
}

}  // namespace

void Commands::AppendInfoSection(std::string_view section, std::string* out) {
  out->append("# ");
  out->push_back(static_cast<char>(section[0] - 'a' + 'A'));
  out->append(section.substr(1));
  out->append("\r\n");
  const StoreStats st = store_->stats();
  if (section == "memory") {
    Field(out, "used_memory", st.used_bytes);
    Field(out, "used_memory_human", Human(st.used_bytes));
    const uint64_t limit = options_.maxmemory > 0 ? options_.maxmemory : st.capacity_bytes;
    Field(out, "maxmemory", limit);
    Field(out, "maxmemory_human", Human(limit));
    Field(out, "maxmemory_policy", "noeviction");
    Field(out, "kv_table_slots", st.table_slots);
    Field(out, "kv_table_resizing", st.resizing ? 1 : 0);
  } else if (section == "stats") {
    Field(out, "total_commands_processed", stats_.commands);
    Field(out, "keyspace_hits", stats_.keyspace_hits);
    Field(out, "keyspace_misses", stats_.keyspace_misses);
    Field(out, "expired_keys", st.expired_keys);
  } else if (section == "keyspace") {
    if (st.keys > 0) {
      Field(out, "db0",
            "keys=" + std::to_string(st.keys) + ",expires=" + std::to_string(st.volatile_keys) +
                ",avg_ttl=0");
    }
    return;
  }
  if (info_ != nullptr) info_->AppendInfo(section, out);
}

// INFO [section ...]: all sections by default.
void Commands::Info(Call& c) {
  bool all = c.argc() == 1;
  std::vector<std::string> wanted;
  for (size_t i = 1; i < c.argc(); ++i) {
    std::string s(c.args[i]);
    for (char& ch : s) ch = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
    if (s == "all" || s == "default" || s == "everything") {
      all = true;
    } else {
      wanted.push_back(std::move(s));
    }
  }
  std::string text;
  for (std::string_view section : kSections) {
    bool want = all;
    for (const std::string& w : wanted) want = want || w == section;
    if (!want) continue;
    if (!text.empty()) text.append("\r\n");
    AppendInfoSection(section, &text);
  }
  AppendBulk(c.out, text);
}

}  // namespace kv
