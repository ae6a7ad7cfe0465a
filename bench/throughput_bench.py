#!/usr/bin/env python3
"""throughput_bench — spare-kv protected (under an agent) vs --unprotected.

Both servers run for the whole bench; rounds alternate A B A B ... (A =
protected, B = unprotected), each round one `redis-benchmark -p P -t set,get
-c 50 -n 200000 --csv`. Every reply of the protected server waits for its
epoch to be durable (policy local: applied by the agent), so this measures
the full cost of protection: tracking, commit, staging, apply, output gate.

Reported per mode and test: median rps and median p99 latency over the
rounds, the ratio of medians protected/unprotected, and the median of the
per-round paired ratios (robust to drift on a shared machine). Also the CPU
seconds the server and the agent used per round.

Target (issue): SET rps protected/unprotected >= 0.80.

  bench/throughput_bench.py --rounds 5 --tracker uffd
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TARGET_SET_RATIO = 0.80
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")


def redis_benchmark_version() -> str:
    cp = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
    return cp.stdout.strip() or cp.stderr.strip()


def run_redis_benchmark(port: int, args) -> dict:
    cmd = ["redis-benchmark", "-p", str(port), "-t", args.tests, "-c", str(args.clients),
           "-n", str(args.requests), "--csv", *args.rb_arg]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=args.round_timeout_s)
    if cp.returncode != 0:
        bl.fail(f"{' '.join(cmd)} failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}")
    # redis-benchmark 7.x: "test","rps","avg_latency_ms","min_latency_ms",
    # "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    rows = list(csv.DictReader(io.StringIO(cp.stdout)))
    out = {}
    for row in rows:
        try:
            out[row["test"]] = {"rps": float(row["rps"]),
                                "avg_ms": float(row["avg_latency_ms"]),
                                "p50_ms": float(row["p50_latency_ms"]),
                                "p99_ms": float(row["p99_latency_ms"]),
                                "max_ms": float(row["max_latency_ms"])}
        except (KeyError, ValueError):
            bl.fail(f"unexpected redis-benchmark CSV (needs p99_latency_ms):\n{cp.stdout}")
    wanted = {t.upper() for t in args.tests.split(",")}
    if not wanted <= set(out):
        bl.fail(f"redis-benchmark printed {sorted(out)}, expected {sorted(wanted)}:\n{cp.stdout}"
                f"{cp.stderr}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=bl.DEFAULT_BUILD)
    ap.add_argument("--rounds", type=int, default=5, help="rounds per mode (recorded)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds per mode first")
    ap.add_argument("--tests", default="set,get")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--tracker", choices=["uffd", "mprotect", "auto"],
                    default=os.environ.get("SPARE_TRACKER", "auto"))
    ap.add_argument("--rb-arg", action="append", default=[],
                    help="extra argument for redis-benchmark (repeatable), e.g. --rb-arg=-P --rb-arg=16")
    ap.add_argument("--kv-arg", action="append", default=[],
                    help="extra argument for both spare-kv servers (repeatable)")
    ap.add_argument("--run-arg", action="append", default=[],
                    help="extra argument for `spare run` (repeatable)")
    ap.add_argument("--round-timeout-s", type=float, default=600)
    bl.add_quiet_args(ap)
    ap.add_argument("--agent-dir-base", default=None,
                    help="where to create the agent directory (default: $TMPDIR or /tmp); "
                         "its filesystem matters, the agent fsyncs state.json on restarts")
    ap.add_argument("--keep-dir", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    quiet = bl.wait_quiet(args.wait_quiet, args.wait_quiet_max_s) if args.wait_quiet else None

    kv = bl.binary(args.build, "spare-kv")
    tracker_env = {} if args.tracker == "auto" else {"SPARE_TRACKER": args.tracker}
    tests = [t.upper() for t in args.tests.split(",")]
    rounds = {"protected": [], "unprotected": []}
    cpu = {"protected": [], "unprotected": [], "agent": []}
    summary = {
        "benchmark": "throughput",
        "command": bl.command_line(),
        "wait_quiet": quiet,
        "machine": bl.machine_facts(tracker=args.tracker,
                                    redis_benchmark=redis_benchmark_version()),
        "config": {"rounds": args.rounds, "warmup": args.warmup, "tests": tests,
                   "clients": args.clients, "requests": args.requests,
                   "redis_benchmark_args": args.rb_arg, "kv_args": args.kv_arg,
                   "run_args": args.run_arg, "order": "A B A B ... (A = protected)"},
    }
    unprot = None
    try:
        with bl.Agent(args.build, env=tracker_env, keep_dir=args.keep_dir,
                      base=args.agent_dir_base) as agent:
            summary["machine"]["agent_dir_fs"] = agent.dir_fs
            p_port, u_port = bl.free_port(), bl.free_port()
            while u_port == p_port:
                u_port = bl.free_port()
            agent.run("kv-tput", [str(kv), "--port", str(p_port), *args.kv_arg],
                      run_args=args.run_arg, env=tracker_env)
            bl.wait_pong(p_port, timeout=60)
            ulog = open(agent.dir / "unprotected.log", "wb")
            unprot = subprocess.Popen([str(kv), "--port", str(u_port), "--unprotected",
                                       *args.kv_arg], stdout=ulog, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            bl.wait_pong(u_port, timeout=60, proc=unprot)
            inst = agent.instance("kv-tput")
            summary["instance_before"] = inst
            pids = {"protected": int(inst["pid"]), "unprotected": unprot.pid,
                    "agent": agent.proc.pid}
            modes = [("protected", p_port), ("unprotected", u_port)]
            for r in range(args.warmup + args.rounds):
                for mode, port in modes:
                    c0 = {k: cpu_seconds(p) for k, p in pids.items()}
                    t0 = time.monotonic()
                    res = run_redis_benchmark(port, args)
                    wall = time.monotonic() - t0
                    c1 = {k: cpu_seconds(p) for k, p in pids.items()}
                    tag = "warmup" if r < args.warmup else f"round {r - args.warmup}"
                    print(f"[{tag}] {mode:11s} " + "  ".join(
                        f"{t} {res[t]['rps']:9.0f} rps p99 {res[t]['p99_ms']:6.3f} ms"
                        for t in tests), file=sys.stderr)
                    if r < args.warmup:
                        continue
                    res["wall_s"] = round(wall, 3)
                    rounds[mode].append(res)
                    cpu[mode].append(round(c1[mode] - c0[mode], 2))
                    if mode == "protected":
                        cpu["agent"].append(round(c1["agent"] - c0["agent"], 2))
            inst = agent.instance("kv-tput")
            summary["instance_after"] = inst
            if int(inst.get("restarts", 0)) != 0:
                bl.fail(f"protected spare-kv restarted during the bench: {inst}")
    except bl.BenchError as e:
        print(f"throughput_bench: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if unprot is not None and unprot.poll() is None:
            unprot.send_signal(signal.SIGTERM)
            try:
                unprot.wait(timeout=5)
            except subprocess.TimeoutExpired:
                unprot.kill()
                unprot.wait()

    results, rows = {}, []
    for t in tests:
        per = {}
        for mode in ("protected", "unprotected"):
            rps = [x[t]["rps"] for x in rounds[mode]]
            p99 = [x[t]["p99_ms"] for x in rounds[mode]]
            per[mode] = {"rps": bl.summarize(rps), "p99_ms": bl.summarize(p99),
                         "p50_ms": bl.summarize([x[t]["p50_ms"] for x in rounds[mode]])}
        paired = [p[t]["rps"] / u[t]["rps"]
                  for p, u in zip(rounds["protected"], rounds["unprotected"])]
        per["ratio_rps_of_medians"] = round(per["protected"]["rps"]["p50"] /
                                            per["unprotected"]["rps"]["p50"], 3)
        per["ratio_rps_paired"] = bl.summarize(paired)
        per["ratio_p99_of_medians"] = round(per["protected"]["p99_ms"]["p50"] /
                                            per["unprotected"]["p99_ms"]["p50"], 3)
        results[t] = per
        for mode in ("protected", "unprotected"):
            rows.append([t, mode, per[mode]["rps"]["p50"], per[mode]["rps"]["min"],
                         per[mode]["p50_ms"]["p50"], per[mode]["p99_ms"]["p50"],
                         per[mode]["p99_ms"]["max"]])
        rows.append([t, "ratio p/u", per["ratio_rps_of_medians"], per["ratio_rps_paired"]["min"],
                     "", per["ratio_p99_of_medians"], ""])
    summary["results"] = results
    summary["cpu_s_per_round"] = {k: bl.summarize(v) for k, v in cpu.items()}
    summary["rounds"] = rounds
    set_ratio = results.get("SET", {}).get("ratio_rps_of_medians")
    summary["targets"] = {"set_rps_ratio": TARGET_SET_RATIO}
    summary["met"] = {"set_rps_ratio": set_ratio is not None and set_ratio >= TARGET_SET_RATIO}
    human = bl.table(["test", "mode", "rps med", "rps min", "p50 ms med", "p99 ms med",
                      "p99 ms max"], rows)
    human += ("\n\nCPU s/round (median): protected server "
              f"{summary['cpu_s_per_round']['protected'].get('p50', float('nan')):.2f}, "
              f"agent {summary['cpu_s_per_round']['agent'].get('p50', float('nan')):.2f}, "
              f"unprotected server "
              f"{summary['cpu_s_per_round']['unprotected'].get('p50', float('nan')):.2f}")
    human += (f"\nSET rps ratio protected/unprotected {set_ratio} (target >= "
              f"{TARGET_SET_RATIO}): {'met' if summary['met']['set_rps_ratio'] else 'NOT met'}")
    bl.emit(summary, human, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
