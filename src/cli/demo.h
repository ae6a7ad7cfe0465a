// demo.cc is compiled into spare_cli (see src/cli/CMakeLists.txt)
//
// cli/demo.h — `spare demo`: the product's job in one command.
//
// Starts a private agent in a temporary directory, runs spare-kv (found next
// to the spare binary) under it with policy `local`, writes a few hundred
// keys with redis-cli, then kill -9s spare-kv several times while a writer
// keeps issuing SETs. After each kill it measures kill -> first PONG and
// checks that every acknowledged key is back with its value. Prints one line
// per kill, the `spare status` table and a summary line:
//   demo: 5 kills, restart p50 4.1 ms, max 6.3 ms, 1234 keys verified, 0 lost
// Cleans up (stops the instance and the agent, removes the directory) unless
// keep is set.
//
// Threading: runs on the caller's thread; starts one writer thread and
// child processes, all ended before it returns.
#pragma once

#include <string>

namespace spare::cli {

struct DemoOptions {
  int kills = 5;
  int port = 0;     // 0: pick a free port
  std::string dir;  // empty: a new temporary directory
  bool keep = false;
  bool local_only = false;  // part 1 only (no standby, no failover)
};

// Returns the process exit code: 0 when nothing acknowledged was lost,
// 1 on loss or when a step failed (the reason is printed to stderr).
int RunDemo(const DemoOptions& options);

}  // namespace spare::cli
