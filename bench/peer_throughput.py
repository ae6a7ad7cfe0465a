#!/usr/bin/env python3
"""peer_throughput — spare-kv (unprotected, local, hot) beside redis-server alone and redis-server + replica + WAIT, on one data set.

Data set: --data-size of values (default 1 GiB) in --value-size values
(default 1 KiB), so keys = data / value = 1,048,576 keys by default, named
as redis-benchmark -r names them (key:000000000000 ...). The key space of
every load (-r / --keyspace) is all of those keys: every SET overwrites a
random existing key with a value of the same size, every GET hits one (a
GET miss fails the run).

Servers, all alive at once and each filled with the same keys by pipelined
SETs (throughput_bench.fill; not DEBUG POPULATE, whose key names differ):
  kv-unprotected  spare-kv --unprotected
  kv-local        spare-kv under `spare run --policy local`
  kv-hot          spare-kv under `spare run --policy hot`; the agent runs
                  with --standby 127.0.0.1:PORT of a `spare standby` on this
                  host, both with UCX_TLS pinned (default tcp)
  redis           redis-server --save '' --appendonly no
  redis+replica   a second redis-server of the same kind and a third one
                  with --replicaof it; each SET is followed by WAIT 1 0
The one agent serves both protected instances.

Loads: `redis-benchmark -t set|get -c 50 -n N -r KEYS -d V -P P --csv`
("rb"), and bench/resp_bench ("resp": the same load from a small C++ tool
that can send WAIT after each SET; the SET + WAIT pair is one request, and
its latency runs from the write of its batch to the WAIT reply). redis+replica
runs only under resp_bench (GETs go to the primary, without WAIT); every
other server runs under both tools, so the resp rows of redis, kv-unprotected
and kv-hot calibrate the tool against redis-benchmark on the same servers.

Rounds: --warmup (1, not recorded) + --rounds (3); in each round, per -P
(1, 16) and test (SET, GET), every mode runs once, in an order rotated by
one each round. Reported per -P, test and mode: median rps, median of the
per-round p50, p99 and max latency, the max of the per-round p99, and the
ratios of median rps to kv-unprotected and to redis alone under the same
tool. Any tool error, WAIT reply below 1, GET miss, DBSIZE change, server
exit or protected-instance restart fails the run (exit 1). Every process
started is stopped on exit, failures included.

Rerun (266 s on the 2-core VM, fills included; ≈ 12 GiB of RAM). The
binaries are copied out of the shared build first, so a rebuild by someone
else cannot replace them mid-run:

  ninja -C build spare spare-kv resp_bench
  mkdir -p /tmp/peer-build/bin && cp build/bin/{spare,spare-kv,resp_bench} /tmp/peer-build/bin/
  bench/peer_throughput.py --build /tmp/peer-build --out bench/results/peer_throughput.json
  bench/peer_throughput.py --build /tmp/peer-build --smoke   # 64 MiB, 1 round, 50k requests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
import throughput_bench as tb  # noqa: E402

# (server, tool) in their base order; each round rotates it by one.
MODES = [("kv-unprotected", "rb"), ("kv-local", "rb"), ("kv-hot", "rb"), ("redis", "rb"),
         ("kv-unprotected", "resp"), ("kv-local", "resp"), ("kv-hot", "resp"),
         ("redis", "resp"), ("redis+replica", "resp")]


def label(mode) -> str:
    return f"{mode[0]}/{mode[1]}"


class Procs:
    """Processes this run started (not under the agent); stopped by pid."""

    def __init__(self, dir_: Path, env: dict):
        self.dir, self.env, self.procs = dir_, env, []

    def start(self, name: str, argv: list) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=self.env, start_new_session=True, cwd=self.dir)
        log.close()
        p.name = name
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                bl.fail(f"{p.name} (pid {p.pid}) exited with {p.returncode}:\n"
                        f"{self.log(p.name)[-2000:]}")

    def close(self) -> None:
        for p in reversed(self.procs):
            bl.terminate(p)


def wait_log(procs: Procs, name: str, text: str, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in procs.log(name):
            return
        procs.check()
        time.sleep(0.02)
    bl.fail(f"{text!r} never appeared in {name}.log:\n{procs.log(name)[-2000:]}")


def redis_server(procs: Procs, name: str, port: int, extra=()) -> subprocess.Popen:
    d = procs.dir / name
    d.mkdir()
    p = procs.start(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(d),
                           "--daemonize", "no", *extra])
    bl.wait_pong(port, timeout=30, proc=p)
    return p


def wait_replica_up(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tb.info(port, "replication").get("master_link_status") == "up":
            return
        time.sleep(0.1)
    bl.fail(f"replica on port {port}: master link not up after {timeout:.0f} s")


def dbsize(port: int) -> int:
    with bl.Resp(port, timeout=60) as r:
        return r.command("DBSIZE")


def run_resp_bench(tool: Path, port: int, test: str, keys: int, value_size: int,
                   pipeline: int, wait: int, seed: int, args) -> dict:
    cmd = [str(tool), "--port", str(port), "--test", test.lower(), "--clients", str(args.clients),
           "--requests", str(args.requests), "--pipeline", str(pipeline),
           "--keyspace", str(keys), "--value-size", str(value_size),
           "--wait-replicas", str(wait), "--seed", str(seed),
           "--timeout-s", str(args.round_timeout_s)]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=args.round_timeout_s + 30)
    except subprocess.TimeoutExpired:
        bl.fail(f"{' '.join(cmd)}: no result within {args.round_timeout_s + 30:.0f} s")
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1]) if lines else None
    if cp.returncode != 0 or res is None or res["errors"] or res["misses"]:
        bl.fail(f"{' '.join(cmd)} failed (exit {cp.returncode}):\n{cp.stdout}{cp.stderr}")
    return res


def summarize_cell(rs: list) -> dict:
    return {k: bl.summarize([x[k] for x in rs]) for k in ("rps", "p50_ms", "p99_ms", "max_ms")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--build", type=Path, default=bl.DEFAULT_BUILD)
    ap.add_argument("--data-size", type=bl.parse_size, default=1 << 30)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--tests", default="set,get")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200000, help="per run")
    ap.add_argument("--smoke", action="store_true",
                    help="quick check: 64 MiB, 1 round, no warm-up, 50k requests")
    ap.add_argument("--ucx-tls", default=os.environ.get("UCX_TLS", "tcp"))
    ap.add_argument("--standby-timeout-ms", type=int, default=None,
                    help="spare standby --timeout-ms (default: the standby's default)")
    ap.add_argument("--chunk-mib", type=int, default=8, help="bytes of SETs per fill batch")
    ap.add_argument("--round-timeout-s", type=float, default=180)
    ap.add_argument("--seed", type=int, default=1, help="resp_bench seed (+ round index)")
    ap.add_argument("--keep-dir", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.smoke:
        args.data_size, args.rounds, args.warmup, args.requests = 64 << 20, 1, 0, 50000
    args.pipelines = tb.csv_list(args.pipelines, int)
    args.tests = [t.upper() for t in tb.csv_list(args.tests)]
    args.rb_arg = []
    keys = args.data_size // args.value_size
    region = tb.default_region_size(keys, args.value_size)
    kv_args = ["--region-size", str(region)]

    kv = bl.binary(args.build, "spare-kv")
    tool = bl.binary(args.build, "resp_bench")
    spare = bl.binary(args.build, "spare")
    env = {**os.environ, "UCX_TLS": args.ucx_tls}
    dirty = subprocess.run(["git", "-C", str(bl.REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.strip()
    summary = {
        "benchmark": "peer_throughput",
        "command": bl.command_line(),
        "machine": bl.machine_facts(redis_benchmark=tb.redis_benchmark_version(),
                                    redis_server=redis_version, UCX_TLS=args.ucx_tls,
                                    dirty_files=dirty.split("\n")[:-1] if dirty else []),
        "config": {"data_bytes": args.data_size, "value_size": args.value_size, "keys": keys,
                   "keyspace": keys, "region_size": region, "pipelines": args.pipelines,
                   "tests": args.tests, "rounds": args.rounds, "warmup": args.warmup,
                   "clients": args.clients, "requests": args.requests,
                   "modes": [label(m) for m in MODES],
                   "order": "per round, per -P, per test: every mode once, base order "
                            "rotated by the round index"},
    }
    tmp = Path(tempfile.mkdtemp(prefix="spare-peer-"))
    procs = Procs(tmp, env)
    agent = None
    unprot = None
    t_start = time.monotonic()
    try:
        standby_port = bl.free_port()
        sb_args = [str(spare), "standby", "--listen", f"127.0.0.1:{standby_port}",
                   "--name", "peer-bench"]
        if args.standby_timeout_ms:
            sb_args += ["--timeout-ms", str(args.standby_timeout_ms)]
        standby = procs.start("standby", sb_args)
        wait_log(procs, "standby", "listening on")
        agent = bl.Agent(args.build, env={"UCX_TLS": args.ucx_tls}, keep_dir=args.keep_dir,
                         base=str(tmp), args=["--standby", f"127.0.0.1:{standby_port}"])
        agent.__enter__()
        summary["machine"]["agent_dir_fs"] = agent.dir_fs

        used = {standby_port}

        def port() -> int:
            p = bl.free_port()
            while p in used:
                p = bl.free_port()
            used.add(p)
            return p

        ports = {s: port() for s in ("kv-unprotected", "kv-local", "kv-hot", "redis",
                                      "redis+replica")}
        replica_port = port()
        unprot = tb.Unprotected(kv, ports["kv-unprotected"], kv_args, {},
                                tmp / "kv-unprotected.log")
        pids = {"kv-unprotected": unprot.pid}
        for policy in ("local", "hot"):
            s = f"kv-{policy}"
            agent.run(s, [str(kv), "--port", str(ports[s]), *kv_args], policy=policy)
            bl.wait_pong(ports[s], timeout=60)
            pids[s] = int(agent.instance(s)["pid"])
        pids["redis"] = redis_server(procs, "redis", ports["redis"]).pid
        pids["redis+replica"] = redis_server(procs, "redis-primary", ports["redis+replica"]).pid
        pids["replica"] = redis_server(procs, "redis-replica", replica_port,
                                       ["--replicaof", "127.0.0.1",
                                        str(ports["redis+replica"])]).pid
        wait_replica_up(replica_port)
        pids["agent"], pids["standby"] = agent.proc.pid, standby.pid

        def healthy() -> None:
            procs.check()
            for s in ("kv-local", "kv-hot"):
                tb.check_alive(agent, s, pids[s], unprot)

        fills = {}
        for s, p in ports.items():
            print(f"filling {s}: {keys} keys x {args.value_size} B ...", file=sys.stderr)
            fills[s] = tb.fill(p, keys, args.value_size, args.chunk_mib << 20)
            if s == "redis+replica":
                t0 = time.monotonic()
                with bl.Resp(p, timeout=300) as r:
                    acked = r.command("WAIT", 1, 0)
                if acked < 1 or dbsize(replica_port) != keys:
                    bl.fail(f"replica after the fill: WAIT {acked}, DBSIZE "
                            f"{dbsize(replica_port)} (want {keys})")
                fills[s]["replica_wait_s"] = round(time.monotonic() - t0, 2)
            print(f"  {fills[s]['seconds']} s ({fills[s]['mib_per_s']} MiB/s)", file=sys.stderr)
        time.sleep(1.0)
        healthy()
        summary["fill"] = fills
        summary["rss_after_fill_kib"] = {k: bl.proc_rss_kib(v) for k, v in pids.items()}

        rb_args = SimpleNamespace(clients=args.clients, requests=args.requests, rb_arg=[],
                                  round_timeout_s=args.round_timeout_s)
        rounds = {(P, t, label(m)): [] for P in args.pipelines for t in args.tests for m in MODES}
        for r in range(args.warmup + args.rounds):
            warm = r < args.warmup
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            for P in args.pipelines:
                for test in args.tests:
                    for mode in order:
                        server, toolname = mode
                        p = ports[server]
                        st0 = tb.info(p, "stats")
                        watch = [pids[server]] + ([pids["agent"], pids["standby"]]
                                                  if server.startswith("kv-") and server !=
                                                  "kv-unprotected" else []) \
                            + ([pids["replica"]] if server == "redis+replica" else [])
                        c0 = [tb.cpu_seconds(x) for x in watch]
                        if toolname == "rb":
                            res = tb.run_redis_benchmark(p, pids[server], test, keys,
                                                         args.value_size, P, rb_args)
                        else:
                            wait = 1 if server == "redis+replica" and test == "SET" else 0
                            res = run_resp_bench(tool, p, test, keys, args.value_size, P, wait,
                                                 args.seed + r, args)
                        cpu = [round(tb.cpu_seconds(x) - c, 2) for x, c in zip(watch, c0)]
                        st = tb.numeric_delta(st0, tb.info(p, "stats"))
                        if test == "GET" and st.get("keyspace_misses", 0) > 0:
                            bl.fail(f"{label(mode)} -P {P}: {st['keyspace_misses']} GET misses")
                        healthy()
                        tag = "warmup" if warm else f"round {r - args.warmup}"
                        print(f"[{tag}] -P {P:2d} {test} {label(mode):20s} {res['rps']:10.0f} "
                              f"rps  p50 {res['p50_ms']:7.3f}  p99 {res['p99_ms']:7.3f}  "
                              f"max {res['max_ms']:7.3f} ms  cpu {cpu}", file=sys.stderr)
                        if not warm:
                            rec = {k: res[k] for k in ("rps", "p50_ms", "p99_ms", "max_ms")}
                            rec["cpu_s"] = dict(zip(["server", "agent", "standby"]
                                                    if len(watch) == 3 else
                                                    ["server", "replica"], cpu))
                            if toolname == "resp":
                                rec["first_read_p99_ms"] = res["first_read_p99_ms"]
                            rounds[(P, test, label(mode))].append(rec)
        # SETs overwrite existing keys: every server still holds exactly them.
        for s, p in {**ports, "replica": replica_port}.items():
            n = dbsize(p)
            if n != keys:
                bl.fail(f"{s}: DBSIZE {n} after the runs, want {keys}")
        summary["rss_at_end_kib"] = {k: bl.proc_rss_kib(v) for k, v in pids.items()}
        summary["suspicions"] = {
            "standby_suspected": procs.log("standby").count("suspected"),
            "standby_fenced": procs.log("standby").count(" fenced ("),
            "agent_silent_for": agent.log_tail(10 ** 6).count(" silent for ")}
    except (bl.BenchError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as e:
        print(f"peer_throughput: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if agent is not None:
            agent.close()
        if unprot is not None:
            unprot.close()
        procs.close()
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    summary["elapsed_s"] = round(time.monotonic() - t_start)

    results, rows = [], []
    for P in args.pipelines:
        for test in args.tests:
            cells = {label(m): summarize_cell(rounds[(P, test, label(m))]) for m in MODES}
            for m in MODES:
                c = cells[label(m)]
                base_kv = cells[f"kv-unprotected/{m[1]}"]["rps"]["p50"]
                base_redis = cells[f"redis/{m[1]}"]["rps"]["p50"]
                rec = {"pipeline": P, "test": test, "mode": label(m), **c,
                       "ratio_rps_vs_kv_unprotected": round(c["rps"]["p50"] / base_kv, 3),
                       "ratio_rps_vs_redis": round(c["rps"]["p50"] / base_redis, 3),
                       "rounds": rounds[(P, test, label(m))]}
                results.append(rec)
                rows.append([P, test, label(m) + (" +WAIT 1 0" if m[0] == "redis+replica"
                                                  and test == "SET" else ""),
                             c["rps"]["p50"], rec["ratio_rps_vs_kv_unprotected"],
                             rec["ratio_rps_vs_redis"], c["p50_ms"]["p50"], c["p99_ms"]["p50"],
                             c["p99_ms"]["max"], c["max_ms"]["p50"]])
    summary["results"] = results
    human = bl.table(["-P", "test", "server/tool", "rps", "x kv-unprot", "x redis", "p50 ms",
                      "p99 ms", "p99 max", "max ms"], rows)
    human += ("\n\nrps, p50, p99 and max: medians over rounds (p99 max: the largest per-round "
              "p99); ratios: median rps over that of kv-unprotected and of redis alone under "
              f"the same tool. Suspicions: {summary['suspicions']}; run took "
              f"{summary['elapsed_s']} s")
    bl.emit(summary, human, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
