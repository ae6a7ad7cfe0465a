#!/usr/bin/env python3
"""report — renders bench/results/*.json as the Markdown tables of docs/BENCHMARKS.md.

  bench/report.py                  # all result files in bench/results
  bench/report.py --results DIR

Figures in the doc are pasted from this output, so every number there is
traceable to a JSON file and the command recorded in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def f(x, nd=1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and x != x:
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def machine(m: dict) -> str:
    return (f"nproc {m.get('nproc')}, kernel {m.get('kernel')}, {m.get('cpu')}, "
            f"{m.get('mem_gib')} GiB; load average at start "
            f"{m.get('loadavg_at_start', [0])[0]:.1f}, at end "
            f"{m.get('loadavg_at_end', [0])[0]:.1f}; agent dir on {m.get('agent_dir_fs', '?')}; "
            f"git {m.get('git')}; {m.get('date_utc')}")


def restart(d: dict) -> str:
    out = [f"`{d['command']}`", "", f"Machine: {machine(d['machine'])}; tracker "
           f"{d['machine'].get('tracker')}.", ""]
    out.append("| live data | kills | kill→PONG p50 | p99 | max | p50 without 1st kill | "
               "1st kill (RSS) | kill→exit p50 | agent crash→attach p50 | p99 | max |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in d["sizes"]:
        k, a, e = s["kill_to_pong_ms"], s["agent_restart_ms"], s["kill_to_exit_ms"]
        rest = s.get("kill_to_pong_ms_after_first", {})
        first = s.get("first_kill") or {}
        rss = first.get("rss_kib", {}).get("VmRSS", 0) / 1024
        out.append(f"| {s['label']} | {k['n']} | {f(k['p50'])} | {f(k['p99'])} | {f(k['max'])} | "
                   f"{f(rest.get('p50'))} | {f(first.get('kill_to_pong_ms'))} ({rss:,.0f} MiB) | "
                   f"{f(e['p50'])} | {f(a.get('p50'))} | {f(a.get('p99'))} | {f(a.get('max'))} |")
    b = d["baseline_unprotected_cold_start"]["start_to_pong_ms"]
    out.append(f"| cold start, no agent | {b['n']} | {f(b['p50'])} | {f(b['p99'])} | "
               f"{f(b['max'])} | | | | | | |")
    r = d["ratio_p50"]
    out += ["", f"p50 ratio {r['of']}: **{r['value']:.2f}**; targets p50 ≤ "
            f"{d['targets']['p50_ms']} ms: **{'met' if d['met']['p50_ms'] else 'not met'}**, "
            f"ratio ≤ {d['targets']['ratio_p50']}: "
            f"**{'met' if d['met']['ratio_p50'] else 'not met'}**. All times in ms."]
    return "\n".join(out)


def throughput_cases(d: dict) -> str:
    """The real-data-set bench (issue 7): one row per case and test."""
    out = [f"`{d['command']}`", "", f"Machine: {machine(d['machine'])}; tracker "
           f"{d['machine'].get('tracker')}; {d['machine'].get('redis_benchmark')}; "
           f"{d['config']['rounds']} rounds (+{d['config']['warmup']} warm-up) of "
           f"{d['config']['requests']:,} requests per test, -c {d['config']['clients']}; "
           f"run took {d.get('elapsed_s', '?')} s.", ""]
    out.append("| data | value B | keys = -r | -P | pace budget µs | test | protected rps | "
               "unprotected rps | ratio (paired min) | protected p99 ms (max) | "
               "unprotected p99 ms (max) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in d["cases"]:
        for t, per in c["results"].items():
            p, u = per["protected"], per["unprotected"]
            out.append(f"| {c['data']} | {c['value_size']} | {c['keyspace']:,} | {c['pipeline']} | "
                       f"{c['pace_budget_us']} | {t} | {f(p['rps']['p50'], 0)} | "
                       f"{f(u['rps']['p50'], 0)} | **{per['ratio_rps_of_medians']:.3f}** "
                       f"({per['ratio_rps_paired']['min']:.3f}) | {f(p['p99_ms']['p50'], 2)} "
                       f"({f(p['p99_ms']['max'], 2)}) | {f(u['p99_ms']['p50'], 2)} "
                       f"({f(u['p99_ms']['max'], 2)}) |")
    out += ["", "Protected server per epoch (medians over rounds; INFO spare and `spare status` "
            "deltas / commits); memory from /proc/PID/smaps_rollup, MiB:", ""]
    out.append("| data | value B | -P | budget | test | epochs | req/epoch | pages/epoch | "
               "KiB/epoch | ranges/epoch | declared KiB/epoch (calls) | collect µs | copy µs | "
               "hand-over µs | drop µs | commit µs | agent apply µs | deferred | pages dropped | "
               "RSS / anon after fill | after round |")
    out.append("|" + "---|" * 21)
    for c in d["cases"]:
        fm = c["fill"]["protected"]["mem_kib"]
        for t, per in c["results"].items():
            e, am = per["per_epoch_median"], per["mem_after_round_kib_median"]
            kib = (lambda v: None if v is None else v / 1024)
            out.append(
                f"| {c['data']} | {c['value_size']} | {c['pipeline']} | {c['pace_budget_us']} | "
                f"{t} | {f(e.get('epochs'), 0)} | {f(e.get('requests_per_epoch'))} | "
                f"{f(e.get('pages_per_epoch'))} | {f(kib(e.get('bytes_per_epoch')))} | "
                f"{f(e.get('ranges_per_epoch'))} | {f(kib(e.get('bytes_declared_per_epoch')))} "
                f"({f(e.get('declare_calls_per_epoch'), 0)}) | "
                f"{f(e.get('collect_us'), 0)} | {f(e.get('copy_us'), 0)} | "
                f"{f(e.get('handover_us'), 0)} | {f(e.get('drop_us'), 0)} | "
                f"{f(e.get('commit_us'), 0)} | {f(e.get('agent_apply_us'), 0)} | "
                f"{f(e.get('deferred_commits'), 0)} | {f(e.get('pages_dropped'), 0)} | "
                f"{f(fm.get('Rss', 0) / 1024, 0)} / {f(fm.get('Anonymous', 0) / 1024, 0)} | "
                f"{f(am.get('Rss', 0) / 1024, 0)} / {f(am.get('Anonymous', 0) / 1024, 0)} |")
    return "\n".join(out)


def throughput(d: dict) -> str:
    if "cases" in d:
        return throughput_cases(d)
    out = [f"`{d['command']}`", "", f"Machine: {machine(d['machine'])}; tracker "
           f"{d['machine'].get('tracker')}; {d['machine'].get('redis_benchmark')}.", ""]
    out.append("| test | mode | rps median | rps min | p50 ms median | p99 ms median | p99 ms max |")
    out.append("|---|---|---|---|---|---|---|")
    for t, per in d["results"].items():
        for mode in ("protected", "unprotected"):
            m = per[mode]
            out.append(f"| {t} | {mode} | {f(m['rps']['p50'], 0)} | {f(m['rps']['min'], 0)} | "
                       f"{f(m['p50_ms']['p50'], 3)} | {f(m['p99_ms']['p50'], 3)} | "
                       f"{f(m['p99_ms']['max'], 3)} |")
        out.append(f"| {t} | **protected / unprotected** | **{per['ratio_rps_of_medians']:.3f}** | "
                   f"paired min {per['ratio_rps_paired']['min']:.3f} | | "
                   f"{per['ratio_p99_of_medians']:.3f} | |")
    c = d["cpu_s_per_round"]
    out += ["", f"CPU seconds per round (median): protected server "
            f"{f(c['protected'].get('p50'), 2)}, agent {f(c['agent'].get('p50'), 2)}, "
            f"unprotected server {f(c['unprotected'].get('p50'), 2)}.",
            f"Target SET ratio ≥ {d['targets']['set_rps_ratio']}: "
            f"**{'met' if d['met']['set_rps_ratio'] else 'not met'}**."]
    return "\n".join(out)


def commit(d: dict) -> str:
    out = [f"`{d['command']}`", "", f"Machine: {machine(d['machine'])}.", ""]
    out.append("| tracker | resident | dirty pages | mode | pattern | commit µs (median of means) | "
               "p50 µs | p99 µs (median) | p99 µs (worst run) | ms per 10 MB | deferred/commit | "
               "helper share | dropped pages/commit |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in d["results"]:
        out.append(f"| {r['tracker']} | {'1 GiB' if r['resident'] else 'sparse'} | {r['pages']} | "
                   f"{'pipelined' if r['pipelined'] else 'wait'} | "
                   f"{'every 2nd page' if r['strided'] else 'contiguous'} | "
                   f"{f(r['commit_us_mean']['p50'])} | {f(r['commit_us_p50_median'])} | "
                   f"{f(r['commit_us_p99_median'])} | {f(r['commit_us_p99_worst'])} | "
                   f"{f(r['ms_per_10MB_median'], 2) if r['pages'] >= 256 else '–'} | {f(r['deferred_per_commit_median'], 2)} | "
                   f"{f(r.get('helper_share_median', 0.0), 2)} | {f(r.get('dropped_per_commit_median', 0.0), 1)} |")
    out.append("")
    for fl in d.get("memcpy_floor", []):
        out.append(f"- memcpy floor in the {fl['tracker']} process, {fl['pages']} pages: "
                   f"{f(fl['memcpy_us']['p50'])} µs = {fl['ms_per_10MB_median']:.2f} ms per 10 MB")
    out.append("")
    for k, ok in d["met"].items():
        out.append(f"- {k}: target ≤ {d['targets']['ms_per_10MB']} ms per 10 MB: "
                   f"**{'met' if ok else 'not met'}**")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args()
    render = {"restart": restart, "throughput": throughput, "commit": commit}
    for path in sorted(args.results.glob("*.json")):
        d = json.loads(path.read_text())
        kind = d.get("benchmark")
        if kind not in render:
            continue
        print(f"### {path.name}\n")
        print(render[kind](d))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
