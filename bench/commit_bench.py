#!/usr/bin/env python3
"""commit_bench — drives BUILD/bin/commit_bench under a spare agent, once per tracker.

commit_bench is a protected program, and the dirty tracker is chosen at
attach ($SPARE_TRACKER), so for each tracker this starts it with `spare run`
(its stdout goes to the agent's instance log), waits for the instance to
reach state `exited`, and reads the Google Benchmark JSON it wrote to
--benchmark_out. A restart of the bench (it crashed) fails the run.

The bench runs each case in two states of its 1 GiB region: `sparse` (only
the dirtied pages resident) and `1GiB` (the whole region resident, as in a
long-running service): collecting dirty pages walks the page tables, so the
resident size matters as well as the dirty count.

Reported per tracker, state, dirty-page count, mode and pattern: the median over
repetitions of the mean commit time, of the per-run p50 and p99, the worst
per-run p99, and ms per 10 MB dirty. The bench also checks that the runtime
committed at least N pages per commit (else a tracker lost writes).

Target (issue): <= 1 ms per 10 MB dirty (2560 contiguous pages, waiting
for durability before each commit, i.e. staging never the bottleneck).

  bench/commit_bench.py --trackers uffd,mprotect --repetitions 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TARGET_MS_PER_10MB = 1.0
TRACKER_NAMES = {"uffd": "uffd-wp", "mprotect": "mprotect"}


def run_tracker(agent: bl.Agent, exe: Path, tracker: str, args) -> dict:
    out = agent.dir / f"commit-{tracker}.json"
    id_ = f"commit-{tracker}"
    argv = [str(exe), f"--benchmark_out={out}", "--benchmark_out_format=json",
            f"--benchmark_repetitions={args.repetitions}",
            f"--iterations_scale={args.iterations_scale}"]
    if args.filter:
        argv.append(f"--benchmark_filter={args.filter}")
    print(f"[{tracker}] spare run {id_}: {' '.join(argv)}", file=sys.stderr)
    t0 = time.monotonic()
    agent.run(id_, argv, run_args=args.run_arg, env={"SPARE_TRACKER": tracker})
    deadline = t0 + args.timeout_s
    while True:
        inst = agent.instance(id_)
        if inst is None:
            bl.fail(f"[{tracker}] instance {id_} vanished from status")
        if int(inst.get("restarts", 0)) > 0:
            bl.fail(f"[{tracker}] commit_bench crashed and was restarted: {inst}\n"
                    f"instance log:\n{agent.instance_log(id_)}")
        if inst.get("state") == "exited":
            break
        if inst.get("state") in ("failed", "stopped"):
            bl.fail(f"[{tracker}] commit_bench ended in state {inst['state']}: {inst}\n"
                    f"instance log:\n{agent.instance_log(id_)}")
        if time.monotonic() > deadline:
            agent.stop(id_)
            bl.fail(f"[{tracker}] commit_bench still running after {args.timeout_s:.0f} s")
        time.sleep(0.5)
    print(f"[{tracker}] done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if not out.exists():
        bl.fail(f"[{tracker}] commit_bench wrote no {out}; instance log:\n"
                f"{agent.instance_log(id_)}")
    data = json.loads(out.read_text())
    ctx = data.get("context", {})
    used = ctx.get("spare_tracker")
    if used != TRACKER_NAMES[tracker]:
        bl.fail(f"[{tracker}] asked for SPARE_TRACKER={tracker}, the runtime used {used!r}")
    if ctx.get("spare_protected") != "true":
        bl.fail(f"[{tracker}] commit_bench ran unprotected")
    return data


def summarize_runs(data: dict, tracker: str) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    floors: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        if b.get("error_occurred"):
            bl.fail(f"[{tracker}] {b['name']}: {b.get('error_message')}")
        target = floors if b["run_name"].startswith("BM_CopyFloor") else groups
        target.setdefault(b["run_name"], []).append(b)
    floor_rows = []
    for name, reps in floors.items():
        unit = {"us": 1.0, "ns": 1e-3, "ms": 1e3}[reps[0]["time_unit"]]
        floor_rows.append({"tracker": tracker, "pages": int(reps[0]["pages"]),
                           "memcpy_us": bl.summarize([r["real_time"] * unit for r in reps]),
                           "ms_per_10MB_median": bl.percentile([r["ms_per_10MB"] for r in reps],
                                                               50)})
    rows = []
    for name, reps in groups.items():
        # name: BM_Commit/pages:N/pipelined:P/strided:S/iterations:I/manual_time
        fields = dict(part.split(":", 1) for part in name.split("/") if ":" in part)
        pages = int(fields["pages"])
        pipelined = fields["pipelined"] == "1"
        unit = {"us": 1.0, "ns": 1e-3, "ms": 1e3}[reps[0]["time_unit"]]
        mean_us = [r["real_time"] * unit for r in reps]
        per_commit = [r["pages_per_commit"] for r in reps]
        if not pipelined and min(per_commit) < pages:
            bl.fail(f"[{tracker}] {name}: runtime committed {min(per_commit)} pages per commit "
                    f"after {pages} were written: a tracker lost writes")
        rows.append({
            "tracker": tracker,
            "pages": pages,
            "pipelined": pipelined,
            "strided": fields["strided"] == "1",
            "resident": fields.get("resident") == "1",
            "repetitions": len(reps),
            "iterations": reps[0]["iterations"],
            "commit_us_mean": bl.summarize(mean_us),
            "commit_us_p50_median": bl.percentile([r["commit_us_p50"] for r in reps], 50),
            "commit_us_p99_median": bl.percentile([r["commit_us_p99"] for r in reps], 50),
            "commit_us_p99_worst": max(r["commit_us_p99"] for r in reps),
            "commit_us_max": max(r["commit_us_max"] for r in reps),
            "ms_per_10MB_median": bl.percentile([r["ms_per_10MB"] for r in reps], 50),
            "pages_per_commit_median": bl.percentile(per_commit, 50),
            "deferred_per_commit_median": bl.percentile([r["deferred"] for r in reps], 50),
            "bp_waits_per_commit_median": bl.percentile([r["bp_waits"] for r in reps], 50),
            # fraction of the bytes the copy helper thread copied (absent before it existed)
            "helper_share_median": bl.percentile([r.get("helper_share", 0.0) for r in reps], 50),
            # private copies dropped per commit, inside the timed commit (absent before)
            "dropped_per_commit_median": bl.percentile([r.get("dropped", 0.0) for r in reps], 50),
        })
    rows.sort(key=lambda r: (r["resident"], r["strided"], r["pipelined"], r["pages"]))
    return rows, floor_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=bl.DEFAULT_BUILD)
    ap.add_argument("--trackers", default="uffd,mprotect")
    ap.add_argument("--repetitions", type=int, default=10)
    ap.add_argument("--iterations-scale", type=float, default=1.0)
    ap.add_argument("--filter", help="--benchmark_filter regex")
    ap.add_argument("--run-arg", action="append", default=[],
                    help="extra argument for `spare run` (repeatable)")
    ap.add_argument("--timeout-s", type=float, default=3600, help="per tracker")
    bl.add_quiet_args(ap)
    ap.add_argument("--agent-dir-base", default=None,
                    help="where to create the agent directory (default: $TMPDIR or /tmp); "
                         "its filesystem matters, the agent fsyncs state.json on restarts")
    ap.add_argument("--keep-dir", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    quiet = bl.wait_quiet(args.wait_quiet, args.wait_quiet_max_s) if args.wait_quiet else None

    exe = bl.binary(args.build, "commit_bench")
    trackers = [t for t in args.trackers.split(",") if t]
    for t in trackers:
        if t not in TRACKER_NAMES:
            print(f"commit_bench: unknown tracker {t!r}", file=sys.stderr)
            return 2
    summary = {
        "benchmark": "commit",
        "command": bl.command_line(),
        "wait_quiet": quiet,
        "machine": bl.machine_facts(trackers=trackers),
        "config": {"repetitions": args.repetitions, "iterations_scale": args.iterations_scale,
                   "filter": args.filter, "run_args": args.run_arg,
                   "region_bytes": 1 << 30, "page": 4096},
        "results": [],
        "memcpy_floor": [],
        "gbench_context": {},
    }
    try:
        with bl.Agent(args.build, keep_dir=args.keep_dir,
                      base=args.agent_dir_base) as agent:
            summary["machine"]["agent_dir_fs"] = agent.dir_fs
            for t in trackers:
                data = run_tracker(agent, exe, t, args)
                summary["gbench_context"][t] = data.get("context", {})
                rows, floor_rows = summarize_runs(data, t)
                summary["results"].extend(rows)
                summary["memcpy_floor"].extend(floor_rows)
    except bl.BenchError as e:
        print(f"commit_bench: FAILED: {e}", file=sys.stderr)
        return 1

    met = {}
    for r in summary["results"]:
        if r["pages"] == 2560 and not r["pipelined"] and not r["strided"]:
            key = f"{r['tracker']}/{'resident' if r['resident'] else 'sparse'}"
            met[key] = r["commit_us_mean"]["p50"] / 1000 <= TARGET_MS_PER_10MB
    summary["targets"] = {"ms_per_10MB": TARGET_MS_PER_10MB,
                          "measured_at": "pages=2560 contiguous, waiting for durability; "
                                         "sparse = only the dirty pages resident, resident = "
                                         "whole 1 GiB region resident"}
    summary["met"] = met
    rows = [[r["tracker"], "1GiB" if r["resident"] else "sparse", r["pages"],
             "pipe" if r["pipelined"] else "wait",
             "stride2" if r["strided"] else "contig", r["commit_us_mean"]["p50"],
             r["commit_us_p50_median"], r["commit_us_p99_median"], r["commit_us_p99_worst"],
             r["ms_per_10MB_median"], r["pages_per_commit_median"],
             r["deferred_per_commit_median"], r["helper_share_median"],
             r.get("dropped_per_commit_median", 0.0)]
            for r in summary["results"]]
    human = bl.table(["tracker", "resident", "pages", "mode", "pattern", "mean us", "p50 us", "p99 us",
                      "p99 worst", "ms/10MB", "pages/c", "deferred/c", "helper",
                      "dropped/c"], rows)
    human += "\n\nmedians over repetitions; p99 = per-run p99 of single commits."
    for f in summary["memcpy_floor"]:
        human += (f"\nmemcpy floor ({f['tracker']} run), {f['pages']} pages: "
                  f"{f['memcpy_us']['p50']:.0f} us = {f['ms_per_10MB_median']:.3f} ms per 10 MB")
    for t, ok in met.items():
        human += (f"\n{t}: 10 MB dirty (2560 contiguous pages, wait mode) target <= "
                  f"{TARGET_MS_PER_10MB} ms: {'met' if ok else 'NOT met'}")
    bl.emit(summary, human, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
