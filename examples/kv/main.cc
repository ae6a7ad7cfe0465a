// spare-kv — a Redis-protocol key-value server whose whole dataset lives in
// a spare region. Run it under an agent (`spare run -- spare-kv --port P`)
// to have it protected, or with --unprotected as a plain server.
// --config and --users files are checkpointed with the agent (checkpoint.h).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "checkpoint.h"
#include "server.h"
#include "spare/runtime.h"

int main(int argc, char** argv) {
  CLI::App app{"spare-kv: a Redis-protocol key-value server kept in a spare region"};
  kv::ServerOptions options;
  bool unprotected = false;
  app.add_option("--port", options.port, "TCP port to listen on (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--bind", options.bind, "IPv4 address to listen on")->capture_default_str();
  app.add_flag("--unprotected", unprotected,
               "run without spare: anonymous memory, replies released at once (a baseline)");
  app.add_option("--region-size", options.region_size,
                 "bytes of the data region (suffixes K, M, G are powers of 1024)")
      ->capture_default_str()
      ->transform(CLI::AsSizeValue(false));
  std::string writes = "declared";
  app.add_option("--writes", writes,
                 "how each epoch finds what changed: 'declared' (the store declares every "
                 "byte it writes and only those ship; SPARE_VERIFY_WRITES=1 checks it) or "
                 "'pages' (the dirty-page tracker; whole 4 KiB pages ship)")
      ->capture_default_str()
      ->check(CLI::IsMember({"declared", "pages"}));
  app.add_option("--max-batch", options.max_batch,
                 "requests executed per epoch before committing (0: no limit)")
      ->capture_default_str();
  app.add_option("--group-commit-us", options.group_commit_us,
                 "while an epoch is in flight, gather requests into the next one for up to "
                 "this many microseconds (0: commit after every batch)")
      ->capture_default_str();
  app.add_option("--max-clients", options.max_clients, "connections served at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app.add_option("--max-bulk", options.limits.max_bulk,
                 "largest argument accepted, in bytes (at most 512M)")
      ->capture_default_str()
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(size_t{1}, size_t{512} << 20));
  std::string config_path, users_path;
  app.add_option("--config", config_path,
                 "redis.conf-style file: maxclients, hz, maxmemory, maxmemory-policy, "
                 "proto-max-bulk-len, client-query-buffer-limit, requirepass (flags given on "
                 "the command line win)");
  app.add_option("--users", users_path,
                 "users file (`user NAME on >password` per line): clients must AUTH first");
  CLI11_PARSE(app, argc, argv);
  options.declared_writes = writes == "declared";

  auto runtime = unprotected ? spare::Runtime::Unprotected() : spare::Runtime::Attach();
  if (!runtime.ok()) {
    std::fprintf(stderr, "spare-kv: %s\n", runtime.status().ToString().c_str());
    if (!unprotected) {
      std::fprintf(stderr,
                   "spare-kv: start it under an agent (`spare run --id ID -- spare-kv ...`, "
                   "which sets SPARE_AGENT), or pass --unprotected to run without spare\n");
    }
    return 2;
  }
  auto files = kv::LoadCheckpointedFiles(*runtime, config_path, users_path);
  if (!files.ok()) {
    std::fprintf(stderr, "spare-kv: %s\n", files.status().message().c_str());
    return 1;
  }
  if (files->config) {  // a flag given on the command line wins over the file
    const kv::KvConfig& c = *files->config;
    auto given = [&](const char* flag) { return app.count(flag) > 0; };
    if (c.maxclients && !given("--max-clients")) options.max_clients = *c.maxclients;
    if (c.proto_max_bulk_len && !given("--max-bulk"))
      options.limits.max_bulk = *c.proto_max_bulk_len;
    if (c.client_query_buffer_limit) options.max_query_buffer = *c.client_query_buffer_limit;
    if (c.hz) options.hz = *c.hz;
    if (c.maxmemory) options.maxmemory = *c.maxmemory;
    if (c.requirepass && !c.requirepass->empty()) {
      options.users = std::make_shared<kv::Users>(
          kv::Users{{kv::User{"default", true, false, {*c.requirepass}}}});
    }
  }
  if (files->users) options.users = std::make_shared<kv::Users>(std::move(*files->users));
  options.checkpoints = std::move(files->reports);
  auto server = kv::Server::Create(std::move(runtime).value(), options);
  if (!server.ok()) {
    std::fprintf(stderr, "spare-kv: %s\n", server.status().ToString().c_str());
    return 1;
  }
  spare::Status st = (*server)->Run();
  if (!st.ok()) {
    std::fprintf(stderr, "spare-kv: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}
