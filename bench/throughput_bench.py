#!/usr/bin/env python3
"""throughput_bench — spare-kv protected (under an agent) vs --unprotected, on a real data set.

For each case (data-set size x value size) both servers are filled with the
same keys before anything is measured: `keys = data size / value size` keys
named as redis-benchmark names them (key:000000000000 ...), each with a
value of the value size. Then, for each pipelining depth (-P) and key space
(-r, default: every populated key, so a SET overwrites a random existing key
and a GET hits one), rounds alternate A B A B ... (A = protected, B =
unprotected), one `redis-benchmark -t TEST -c 50 -n N -r K -d V -P P --csv`
per test per mode per round. Every reply of the protected server waits for
its epoch to be durable (policy local: applied by the agent), so this
measures the full cost of protection: tracking, commit, staging, apply,
output gate.

Why not DEBUG POPULATE: it names keys prefix:N (key:123), redis-benchmark -r
names them key:%012d (key:000000000123), so after a DEBUG POPULATE fill
every -r SET would create a new key and every GET would miss. The fill is
pipelined SETs (batches of --chunk-mib, each at most a few epochs: spare-kv
commits every --max-batch requests, so each epoch fits staging).

Every protected figure is explained: spare-kv's INFO "spare" section and
the agent's `spare status --json` are read before and after each protected
run, and the differences give, per epoch: requests, pages, bytes, ranges
(and declared bytes/ranges, once spare-kv reports them), and microseconds
spent in collect / copy / hand-over / drop and in the agent's apply. The
protected server's memory (/proc/PID/smaps_rollup Rss and Anonymous) is
read after the fill and after each round. A field that the server does not
report shows as "-".

--pace-budgets B1,B2,...: one protected server per budget (env
SPARE_PACE_BUDGET_US=B; "none" = unset), each filled and measured against
the same unprotected server. --env NAME=VALUE and --kv-arg go to both
servers (e.g. SPARE_PACE_SHARE, or a declared-writes option).

Reported per case and test: median rps and median p99 latency over rounds
for each mode, the ratio of medians protected/unprotected and the median
and min of the per-round paired ratios (robust to drift on a shared
machine). Any redis-benchmark error, non-zero exit, restart of the
protected server or miss on GET fails the run (exit status 1).

Default (267 s on the 2-core VM at aff17d9, fills included; the protected
-P 1 SET rounds are most of it): 1 GiB data set, 1 KiB values (1M keys),
-r = all keys, -P 1 and -P 16, SET and GET, 5 rounds + 1 warmup of 200k
requests per test. --matrix: 64 MiB, 1 GiB, 4 GiB x 64 B, 1 KiB, 16 KiB x
-P 1, 16 (hours; 4 GiB of 64 B values is 67M keys, about 3x that in RAM
per server).

  bench/throughput_bench.py --tracker uffd
  bench/throughput_bench.py --data-sizes 64M --rounds 1 --warmup 0   # a smoke test
  bench/throughput_bench.py --data-sizes 1G --pace-budgets none,500,2000,5000
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TARGET_SET_RATIO = 0.80
CLK_TCK = os.sysconf("SC_CLK_TCK")
MATRIX = {"data_sizes": "64M,1G,4G", "value_sizes": "64,1024,16384", "pipelines": "1,16"}
MODES = ("protected", "unprotected")


# -------------------------------------------------------------- helpers ----

def csv_list(text: str, conv=str) -> list:
    return [conv(x.strip()) for x in text.split(",") if x.strip()]


def default_region_size(keys: int, value_size: int) -> int:
    # Per key: the value, a 16-byte key, the entry header and allocator
    # slack (measured: about 100 bytes over key + value), 16 bytes of hash
    # table (which doubles); plus 256 MiB of room, rounded up to a GiB.
    need = int(keys * (value_size + 16 + 128) * 1.25) + keys * 32 + (256 << 20)
    return -(-need // (1 << 30)) * (1 << 30)


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")


def smaps_rollup_kib(pid: int) -> dict:
    """Rss, Anonymous, ... of a process in KiB (Anonymous = private anonymous
    pages: the protected server's private copies of written region pages)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return out


def info(port: int, section: str) -> dict:
    """One INFO section as {field: int or str}."""
    with bl.Resp(port, timeout=30) as r:
        text = r.command("INFO", section)
    out = {}
    for line in (text or b"").decode(errors="replace").splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        k, v = line.split(":", 1)
        v = v.strip()
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def numeric_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after
            if k in before and isinstance(after[k], (int, float))
            and isinstance(before[k], (int, float)) and not isinstance(after[k], bool)}


def redis_benchmark_version() -> str:
    cp = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
    return cp.stdout.strip() or cp.stderr.strip()


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def run_redis_benchmark(port: int, server_pid: int, test: str, keyspace: int, value_size: int,
                        pipeline: int, args) -> dict:
    cmd = ["redis-benchmark", "-p", str(port), "-t", test.lower(), "-c", str(args.clients),
           "-n", str(args.requests), "-r", str(keyspace), "-d", str(value_size),
           "-P", str(pipeline), "--csv", *args.rb_arg]
    # redis-benchmark spins for ever once its server is gone: watch the
    # server, and stop redis-benchmark (our child, by pid) if it dies.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.round_timeout_s
    why = None
    while why is None:
        try:
            out, err = proc.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if not pid_alive(server_pid):
                why = f"server pid {server_pid} died during the round"
            elif time.monotonic() > deadline:
                why = f"no result within --round-timeout-s {args.round_timeout_s:.0f}"
    if why is not None:
        proc.kill()
        out, err = proc.communicate()
        bl.fail(f"{' '.join(cmd)}: {why}\n{out}{err}")
    # redis-benchmark can exit 0 after error replies ("Error from server:
    # ...") and connection errors: look at what it printed too.
    noise = [ln for ln in (out + err).splitlines()
             if "error" in ln.lower() or "reset" in ln.lower() or "could not" in ln.lower()]
    if proc.returncode != 0 or noise:
        bl.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{out}{err}")
    # redis-benchmark 7.x: "test","rps","avg_latency_ms","min_latency_ms",
    # "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for row in csv.DictReader(io.StringIO(out)):
        if row.get("test") != test:
            continue
        try:
            return {"rps": float(row["rps"]), "avg_ms": float(row["avg_latency_ms"]),
                    "p50_ms": float(row["p50_latency_ms"]),
                    "p99_ms": float(row["p99_latency_ms"]),
                    "max_ms": float(row["max_latency_ms"])}
        except (KeyError, ValueError):
            bl.fail(f"unexpected redis-benchmark CSV (needs p99_latency_ms):\n{out}")
    bl.fail(f"redis-benchmark printed no {test} row:\n{out}{err}")


# ----------------------------------------------------------------- fill ----

def fill(port: int, keys: int, value_size: int, chunk_bytes: int) -> dict:
    """SET key:%012d (redis-benchmark's -r key names) for 0..keys-1, pipelined
    in batches of about chunk_bytes; every reply must be +OK."""
    value = b"v" * value_size
    head = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:"
    tail = b"\r\n$%d\r\n%s\r\n" % (value_size, value)
    per = max(1, min(20000, chunk_bytes // (value_size + 48)))
    t0 = time.monotonic()
    with bl.Resp(port, timeout=600) as r:
        for b0 in range(0, keys, per):
            n = min(per, keys - b0)
            r.sock.sendall(b"".join(head + b"%012d" % j + tail for j in range(b0, b0 + n)))
            want = 5 * n
            while len(r.buf) < want:
                chunk = r.sock.recv(1 << 20)
                if not chunk:
                    bl.fail(f"server on port {port} closed the connection during the fill")
                r.buf += chunk
                if b"-" in chunk:
                    bl.fail(f"SET during the fill answered {chunk[:200]!r}")
            if r.buf != b"+OK\r\n" * n:
                bl.fail(f"SET during the fill answered {r.buf[:200]!r}")
            r.buf = b""
        dbsize = r.command("DBSIZE")
    secs = time.monotonic() - t0
    if dbsize != keys:
        bl.fail(f"after filling {keys} keys DBSIZE is {dbsize}")
    return {"keys": keys, "seconds": round(secs, 2), "batch": per,
            "mib_per_s": round(keys * value_size / (1 << 20) / max(secs, 1e-9), 1)}


# -------------------------------------------------------------- servers ----

class Unprotected:
    def __init__(self, kv: Path, port: int, kv_args: list, env: dict, log: Path):
        self.port = port
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([str(kv), "--port", str(port), "--unprotected", *kv_args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env}, start_new_session=True)
        bl.wait_pong(port, timeout=60, proc=self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        bl.terminate(self.proc)
        self.log.close()


def check_alive(agent: bl.Agent, id_: str, pid: int, unprot: Unprotected) -> dict:
    inst = agent.instance(id_)
    if inst is None or inst.get("state") != "running" or int(inst.get("pid") or 0) != pid \
            or int(inst.get("restarts", 0)) != 0:
        bl.fail(f"protected spare-kv {id_} restarted or stopped: {inst}\ninstance log:\n"
                f"{agent.instance_log(id_)}")
    if unprot.proc.poll() is not None:
        bl.fail(f"unprotected spare-kv exited with {unprot.proc.returncode}")
    return inst


# ------------------------------------------------------------ per epoch ----

STATUS_FIELDS = ("epochs_applied", "bytes_applied", "apply_seconds")


def per_epoch(d: dict, ds: dict, requests: int, wall_s: float) -> dict:
    """Per-epoch figures of one protected run from the INFO spare delta `d`
    and the agent status delta `ds`; None where a field is missing."""
    def g(k):
        return d.get(k)

    commits = g("commits")

    def per(k, scale=1.0):
        v = g(k)
        return None if v is None or not commits else v * scale / commits

    applied = ds.get("epochs_applied")
    return {
        "epochs": commits,
        "epochs_per_s": commits / wall_s if commits is not None and wall_s > 0 else None,
        "requests_per_epoch": requests / commits if commits else None,
        "deferred_commits": g("deferred_commits"),
        "backpressure_waits": g("backpressure_waits"),
        "pages_per_epoch": per("pages_committed"),
        "bytes_per_epoch": per("bytes_committed"),
        "ranges_per_epoch": per("ranges_committed"),
        "bytes_declared_per_epoch": per("bytes_declared"),
        "ranges_declared_per_epoch": per("ranges_declared"),
        "declare_calls_per_epoch": per("declare_calls"),
        "commit_us": per("commit_us_total"),
        "collect_us": per("commit_collect_us_total"),
        "copy_us": per("commit_copy_us_total"),
        "handover_us": per("commit_handover_us_total"),
        "drop_us": per("commit_drop_us_total"),
        "pages_dropped": g("pages_dropped"),
        "agent_epochs": applied,
        "agent_apply_us": ds["apply_seconds"] * 1e6 / applied
        if applied and ds.get("apply_seconds") is not None else None,
        "agent_bytes_per_epoch": ds["bytes_applied"] / applied
        if applied and ds.get("bytes_applied") is not None else None,
    }


def median_of(rows: list, key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return bl.percentile(vals, 50) if vals else None


# ---------------------------------------------------------------- cases ----

def measure(agent, id_, ppid, port_p, unprot, case, pipeline, keyspace, args) -> dict:
    """Warmup + rounds of A B for each test; returns the case's record."""
    pids = {"protected": ppid, "unprotected": unprot.pid, "agent": agent.proc.pid}
    ports = {"protected": port_p, "unprotected": unprot.port}
    rounds = {t: {m: [] for m in MODES} for t in args.tests}
    explain = {t: [] for t in args.tests}
    cpu = {t: {"protected": [], "unprotected": [], "agent": []} for t in args.tests}
    tag0 = (f"{bl.size_label(case['data_bytes'])} v{case['value_size']} -r {keyspace} "
            f"-P {pipeline} budget {case['pace_budget_us']}")
    for r in range(args.warmup + args.rounds):
        warm = r < args.warmup
        for test in args.tests:
            for mode in MODES:
                port = ports[mode]
                if mode == "protected":
                    i0, s0 = info(port, "spare"), agent.instance(id_)
                    st0 = info(port, "stats")
                else:
                    st0 = info(port, "stats")
                c0 = {k: cpu_seconds(p) for k, p in pids.items()}
                t0 = time.monotonic()
                res = run_redis_benchmark(port, pids[mode], test, keyspace, case["value_size"],
                                          pipeline, args)
                wall = time.monotonic() - t0
                c1 = {k: cpu_seconds(p) for k, p in pids.items()}
                st = numeric_delta(st0, info(port, "stats"))
                if test == "GET" and keyspace <= case["keys"] and st.get("keyspace_misses", 0) > 0:
                    bl.fail(f"{mode}: {st['keyspace_misses']} GET misses over -r {keyspace} "
                            f"with {case['keys']} keys populated: the fill and redis-benchmark "
                            f"disagree on key names")
                line = (f"[{tag0} {'warmup' if warm else f'round {r - args.warmup}'}] "
                        f"{test} {mode:11s} {res['rps']:9.0f} rps p99 {res['p99_ms']:7.3f} ms")
                if mode == "protected":
                    i1 = info(port, "spare")
                    inst = check_alive(agent, id_, ppid, unprot)
                    d = numeric_delta(i0, i1)
                    ds = {k: float(inst[k]) - float(s0[k]) for k in STATUS_FIELDS
                          if inst.get(k) is not None and s0.get(k) is not None}
                    pe = per_epoch(d, ds, args.requests, wall)
                    pe["mem_after_kib"] = smaps_rollup_kib(ppid)
                    line += (f"  {pe['epochs']} epochs, "
                             f"{(pe['bytes_per_epoch'] or 0) / 1024:.0f} KiB/epoch")
                print(line, file=sys.stderr)
                if warm:
                    continue
                res["wall_s"] = round(wall, 3)
                rounds[test][mode].append(res)
                cpu[test][mode].append(round(c1[mode] - c0[mode], 2))
                if mode == "protected":
                    cpu[test]["agent"].append(round(c1["agent"] - c0["agent"], 2))
                    pe["info_delta"] = d
                    pe["status_delta"] = ds
                    explain[test].append(pe)

    results = {}
    for test in args.tests:
        per = {}
        for mode in MODES:
            rs = rounds[test][mode]
            per[mode] = {"rps": bl.summarize([x["rps"] for x in rs]),
                         "p99_ms": bl.summarize([x["p99_ms"] for x in rs]),
                         "p50_ms": bl.summarize([x["p50_ms"] for x in rs])}
        paired = [p["rps"] / u["rps"]
                  for p, u in zip(rounds[test]["protected"], rounds[test]["unprotected"])]
        per["ratio_rps_of_medians"] = round(per["protected"]["rps"]["p50"] /
                                            per["unprotected"]["rps"]["p50"], 3)
        per["ratio_rps_paired"] = bl.summarize(paired)
        per["ratio_p99_of_medians"] = round(per["protected"]["p99_ms"]["p50"] /
                                            per["unprotected"]["p99_ms"]["p50"], 3)
        ex = explain[test]
        keys = [k for k in (ex[0] if ex else {}) if k not in ("info_delta", "status_delta",
                                                              "mem_after_kib")]
        per["per_epoch_median"] = {k: median_of(ex, k) for k in keys}
        per["mem_after_round_kib_median"] = {
            k: bl.percentile([e["mem_after_kib"].get(k, 0) for e in ex], 50)
            for k in ("Rss", "Anonymous")} if ex else {}
        per["cpu_s_per_round"] = {k: bl.summarize(v) for k, v in cpu[test].items()}
        results[test] = per
    # All tests of a round together, as the one-key bench reported it.
    cpu_round = {k: bl.summarize([sum(cpu[t][k][i] for t in args.tests)
                                  for i in range(args.rounds)])
                 for k in ("protected", "unprotected", "agent")}
    return {**case, "pipeline": pipeline, "keyspace": keyspace, "results": results,
            "cpu_s_per_round": cpu_round, "rounds": rounds, "explain": explain}


def run_data_case(agent, kv, data_bytes, value_size, args, tracker_env, user_env) -> list:
    keys = data_bytes // value_size
    if keys < 1:
        bl.fail(f"data size {data_bytes} is smaller than one {value_size}-byte value")
    region = args.region_size or default_region_size(keys, value_size)
    kv_args = ["--region-size", str(region), *args.kv_arg]
    label = f"{bl.size_label(data_bytes)}-v{value_size}"
    keyspaces = [keys if k == "all" else int(k) for k in args.keyspace]
    for k in keyspaces:
        if k > keys:
            print(f"# -r {k} > {keys} populated keys: SETs will add keys, GETs miss",
                  file=sys.stderr)
    out = []
    unprot = Unprotected(kv, bl.free_port(), kv_args, {**tracker_env, **user_env},
                         agent.dir / f"unprotected-{label}.log")
    try:
        print(f"[{label}] filling unprotected: {keys} keys x {value_size} B, region "
              f"{bl.size_label(region)} ...", file=sys.stderr)
        ufill = fill(unprot.port, keys, value_size, args.chunk_mib << 20)
        ufill["mem_kib"] = smaps_rollup_kib(unprot.pid)
        print(f"[{label}] unprotected fill {ufill['seconds']} s ({ufill['mib_per_s']} MiB/s)",
              file=sys.stderr)
        for budget in args.pace_budgets:
            id_ = f"kv-{label.lower()}-b{budget}"
            env = dict(user_env)
            if budget != "none":
                env["SPARE_PACE_BUDGET_US"] = str(budget)
            port = bl.free_port()
            while port == unprot.port:
                port = bl.free_port()
            run_args = list(args.run_arg) + [a for k, v in env.items() for a in ("--env",
                                                                                 f"{k}={v}")]
            agent.run(id_, [str(kv), "--port", str(port), *kv_args], run_args=run_args,
                      env=tracker_env)
            try:
                bl.wait_pong(port, timeout=60)
                inst = agent.instance(id_)
                ppid = int(inst["pid"])
                print(f"[{label}] filling protected (budget {budget}) ...", file=sys.stderr)
                pfill = fill(port, keys, value_size, args.chunk_mib << 20)
                time.sleep(args.settle_s)
                pfill["mem_kib"] = smaps_rollup_kib(ppid)
                pfill["info_spare"] = info(port, "spare")
                pfill["used_memory"] = info(port, "memory").get("used_memory")
                pfill["instance"] = check_alive(agent, id_, ppid, unprot)
                print(f"[{label}] protected fill {pfill['seconds']} s ({pfill['mib_per_s']} "
                      f"MiB/s), RSS {pfill['mem_kib'].get('Rss', 0) >> 10} MiB, anon "
                      f"{pfill['mem_kib'].get('Anonymous', 0) >> 10} MiB", file=sys.stderr)
                case = {"data_bytes": data_bytes, "data": bl.size_label(data_bytes),
                        "writes": pfill["info_spare"].get("writes", "-"),
                        "value_size": value_size, "keys": keys, "region_size": region,
                        "pace_budget_us": budget, "env": env, "kv_args": kv_args,
                        "run_args": run_args,
                        "fill": {"protected": pfill, "unprotected": ufill}}
                for pipeline in args.pipelines:
                    for keyspace in keyspaces:
                        out.append(measure(agent, id_, ppid, port, unprot, case, pipeline,
                                           keyspace, args))
                with bl.Resp(port) as r:
                    if r.command("DBSIZE") != keys and max(keyspaces) <= keys:
                        bl.fail(f"protected DBSIZE changed during the SETs: the fill and "
                                f"redis-benchmark disagree on key names")
            finally:
                agent.stop(id_)
                agent.ids.remove(id_)
    finally:
        unprot.close()
    return out


# --------------------------------------------------------------- report ----

def fmt(v, scale=1.0, digits=None) -> str:
    if v is None:
        return "-"
    v = v * scale
    if digits is not None:
        return f"{v:.{digits}f}"
    return bl._fmt(float(v))


def report(cases: list, args) -> str:
    rows, erows = [], []
    for c in cases:
        for test, per in c["results"].items():
            p, u = per["protected"], per["unprotected"]
            rows.append([c["data"], c["value_size"], c["keyspace"], c["pipeline"],
                         c["pace_budget_us"], test, p["rps"]["p50"], u["rps"]["p50"],
                         per["ratio_rps_of_medians"], per["ratio_rps_paired"]["p50"],
                         per["ratio_rps_paired"]["min"], p["p99_ms"]["p50"], p["p99_ms"]["max"],
                         u["p99_ms"]["p50"], u["p99_ms"]["max"]])
            e = per["per_epoch_median"]
            fm = c["fill"]["protected"]["mem_kib"]
            am = per["mem_after_round_kib_median"]
            erows.append([c["data"], c["value_size"], c["pipeline"], c["pace_budget_us"], test,
                          fmt(e.get("epochs"), digits=0), fmt(e.get("requests_per_epoch")),
                          fmt(e.get("pages_per_epoch")), fmt(e.get("bytes_per_epoch"), 1 / 1024),
                          fmt(e.get("ranges_per_epoch")),
                          fmt(e.get("bytes_declared_per_epoch"), 1 / 1024),
                          fmt(e.get("declare_calls_per_epoch")),
                          fmt(e.get("collect_us")), fmt(e.get("copy_us")),
                          fmt(e.get("handover_us")), fmt(e.get("drop_us")),
                          fmt(e.get("commit_us")), fmt(e.get("agent_apply_us")),
                          fmt(e.get("deferred_commits"), digits=0),
                          fmt(e.get("pages_dropped"), digits=0),
                          fmt(fm.get("Rss"), 1 / 1024, 0), fmt(fm.get("Anonymous"), 1 / 1024, 0),
                          fmt(am.get("Rss"), 1 / 1024, 0), fmt(am.get("Anonymous"), 1 / 1024, 0)])
    human = bl.table(["data", "value", "-r", "-P", "budget", "test", "prot rps", "unprot rps",
                      "ratio", "paired", "paired min", "prot p99", "p99 max", "unprot p99",
                      "p99 max"], rows)
    human += ("\n\nrps and p99 (ms) are medians over rounds; ratio = of medians, paired = "
              "median (min) of per-round protected/unprotected.\n\n")
    human += bl.table(["data", "value", "-P", "budget", "test", "epochs", "req/ep", "pages/ep",
                       "KiB/ep", "ranges/ep", "decl KiB/ep", "decl calls/ep", "collect us", "copy us",
                       "handover us", "drop us", "commit us", "apply us", "deferred",
                       "dropped", "fill RSS", "fill anon", "round RSS", "round anon"], erows)
    human += ("\n\nProtected server, medians over rounds: per epoch (INFO spare deltas / "
              "commits; apply = agent apply_seconds / epochs_applied); deferred = commits "
              "merged into a later epoch, dropped = private copies dropped, per round; "
              "RSS/anon in MiB (smaps_rollup) after the fill and after a round.")
    return human


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--build", type=Path, default=bl.DEFAULT_BUILD)
    ap.add_argument("--data-sizes", default="1G",
                    help="data sets (value bytes), comma-separated, e.g. 64M,1G,4G")
    ap.add_argument("--value-sizes", default="1024", help="value bytes (-d), e.g. 64,1024,16384")
    ap.add_argument("--pipelines", default="1,16", help="redis-benchmark -P values")
    ap.add_argument("--keyspace", default="all",
                    help="redis-benchmark -r values; 'all' = the number of populated keys")
    ap.add_argument("--matrix", action="store_true",
                    help="full cross product: data 64M,1G,4G x values 64,1024,16384 x -P 1,16 "
                         "(overrides those three options)")
    ap.add_argument("--pace-budgets", default="none",
                    help="SPARE_PACE_BUDGET_US values for the protected server, comma-separated; "
                         "'none' = leave it unset; one protected server per value")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per mode (recorded)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds per mode first")
    ap.add_argument("--tests", default="set,get")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=200000, help="per test per round")
    ap.add_argument("--chunk-mib", type=int, default=8, help="bytes of SETs per fill batch")
    ap.add_argument("--settle-s", type=float, default=1.0, help="idle time after the fill")
    ap.add_argument("--region-size", type=bl.parse_size, default=None,
                    help="spare-kv --region-size (default: from keys and value size, GiB-rounded)")
    ap.add_argument("--tracker", choices=["uffd", "mprotect", "auto"],
                    default=os.environ.get("SPARE_TRACKER", "auto"))
    ap.add_argument("--rb-arg", action="append", default=[],
                    help="extra argument for redis-benchmark (repeatable)")
    ap.add_argument("--kv-arg", action="append", default=[],
                    help="extra argument for both spare-kv servers (repeatable), "
                         "e.g. --kv-arg=--declared-writes")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for both spare-kv servers (repeatable), "
                         "e.g. --env SPARE_PACE_SHARE=50")
    ap.add_argument("--run-arg", action="append", default=[],
                    help="extra argument for `spare run` (repeatable), e.g. --run-arg=--slots=16")
    ap.add_argument("--round-timeout-s", type=float, default=600)
    bl.add_quiet_args(ap)
    ap.add_argument("--agent-dir-base", default=None,
                    help="where to create the agent directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep-dir", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.matrix:
        args.data_sizes, args.value_sizes, args.pipelines = (
            MATRIX["data_sizes"], MATRIX["value_sizes"], MATRIX["pipelines"])
    data_sizes = csv_list(args.data_sizes, bl.parse_size)
    value_sizes = csv_list(args.value_sizes, int)
    args.pipelines = csv_list(args.pipelines, int)
    args.keyspace = csv_list(args.keyspace)
    args.pace_budgets = [b if b == "none" else str(int(b)) for b in csv_list(args.pace_budgets)]
    args.tests = [t.upper() for t in csv_list(args.tests)]
    user_env = {}
    for e in args.env:
        if "=" not in e:
            ap.error(f"--env wants NAME=VALUE, got {e!r}")
        k, v = e.split("=", 1)
        user_env[k] = v
    quiet = bl.wait_quiet(args.wait_quiet, args.wait_quiet_max_s) if args.wait_quiet else None

    kv = bl.binary(args.build, "spare-kv")
    tracker_env = {} if args.tracker == "auto" else {"SPARE_TRACKER": args.tracker}
    summary = {
        "benchmark": "throughput",
        "command": bl.command_line(),
        "wait_quiet": quiet,
        "machine": bl.machine_facts(tracker=args.tracker,
                                    redis_benchmark=redis_benchmark_version()),
        "config": {"rounds": args.rounds, "warmup": args.warmup, "tests": args.tests,
                   "clients": args.clients, "requests": args.requests,
                   "data_sizes": data_sizes, "value_sizes": value_sizes,
                   "pipelines": args.pipelines, "keyspace": args.keyspace,
                   "pace_budgets": args.pace_budgets, "env": user_env,
                   "redis_benchmark_args": args.rb_arg, "kv_args": args.kv_arg,
                   "run_args": args.run_arg, "chunk_mib": args.chunk_mib,
                   "order": "per round, per test: A B (A = protected)"},
    }
    cases = []
    t_start = time.monotonic()
    try:
        with bl.Agent(args.build, env=tracker_env, keep_dir=args.keep_dir,
                      base=args.agent_dir_base) as agent:
            summary["machine"]["agent_dir_fs"] = agent.dir_fs
            for data_bytes in data_sizes:
                for value_size in value_sizes:
                    cases += run_data_case(agent, kv, data_bytes, value_size, args,
                                           tracker_env, user_env)
    except (bl.BenchError, subprocess.TimeoutExpired, OSError) as e:
        print(f"throughput_bench: FAILED: {e}", file=sys.stderr)
        return 1
    summary["elapsed_s"] = round(time.monotonic() - t_start)
    summary["cases"] = cases

    # The keys of the one-key bench, for the first case (old readers).
    first = cases[0]
    summary["results"] = {t: {k: v for k, v in per.items()
                              if k in ("protected", "unprotected", "ratio_rps_of_medians",
                                       "ratio_rps_paired", "ratio_p99_of_medians")}
                          for t, per in first["results"].items()}
    summary["cpu_s_per_round"] = first["cpu_s_per_round"]
    summary["results_case"] = {k: first[k] for k in ("data", "value_size", "keyspace",
                                                     "pipeline", "pace_budget_us")}
    set_ratio = summary["results"].get("SET", {}).get("ratio_rps_of_medians")
    summary["targets"] = {"set_rps_ratio": TARGET_SET_RATIO}
    summary["met"] = {"set_rps_ratio": set_ratio is not None and set_ratio >= TARGET_SET_RATIO}
    human = report(cases, args)
    human += (f"\n\nSET rps ratio protected/unprotected, first case {summary['results_case']}: "
              f"{set_ratio} (target >= {TARGET_SET_RATIO}): "
              f"{'met' if summary['met']['set_rps_ratio'] else 'NOT met'}; "
              f"run took {summary['elapsed_s']} s")
    bl.emit(summary, human, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
