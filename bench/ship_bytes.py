#!/usr/bin/env python3
"""ship_bytes — network bytes per epoch against the bytes the program wrote (policy hot).

Setup (this host, UCX_TLS pinned, default tcp; UCX_NET_DEVICES=lo): a spare
host (`spare standby --agent` and its agent) and a primary agent with
`--standby`, one spare-kv under `--policy hot` (region 1 GiB), filled with
--keys keys of each value size first (so SETs overwrite live keys). Then,
per value size and pipeline depth, `redis-benchmark -t set -c 50 -r KEYS -d
V -P P -n N` on random existing keys. Before and after each load:

  program wrote  spare-kv's `INFO spare` bytes_declared: the byte ranges
                 the program declared it wrote (values, their headers and
                 the index entries it changed), which is what an epoch
                 carries as data;
  shipped        the agent's `ship_bytes` for the instance (spare status
                 --json; spare_ship_bytes_total): every byte handed to UCX
                 for its epochs — each staging slot's used bytes (slot
                 header, entry table, record, data), over TCP the 64-byte
                 header of each Data frame, and the Commit frame.

The figure is shipped / wrote over the load (target ≤ 1.5), and both per
epoch. Also `bytes_committed` (what the runtime copied into staging) for
the split between data and slot overhead.

  bench/ship_bytes.py --build build --out bench/results/ship_bytes.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import failover_bench as fb  # noqa: E402


def spare_info(port):
    with benchlib.Resp(port, timeout=30) as r:
        text = r.command("INFO", "spare")
    text = text.decode() if isinstance(text, bytes) else (text or "")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def fill(port, keys, value_size):
    """SETs key:0 .. key:(keys-1) (redis-benchmark's __rand_int__ names) with values of
    value_size bytes, pipelined."""
    value = b"v" * value_size
    with benchlib.Resp(port, timeout=120) as r:
        for start in range(0, keys, 1000):
            cmds = [("SET", f"key:{i:012d}", value) for i in range(start, min(keys, start + 1000))]
            r.pipeline(cmds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(benchlib.REPO / "build"))
    ap.add_argument("--tls", default=os.environ.get("UCX_TLS", "tcp"))
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-sizes", default="64,1024,16384")
    ap.add_argument("--pipelines", default="1,16")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    h = fb.Hosts(args.build, args.tls, None)
    rows, runs = [], []
    ok = False
    try:
        port = benchlib.free_port()
        p = h.cli("run", "--agent", h.pri_dir, "--id", "kv", "--policy", "hot", "--", h.kv,
                  "--port", str(port), "--region-size", str(1 << 30))
        if p.returncode != 0:
            benchlib.fail(f"spare run: {p.stdout}{p.stderr}")
        benchlib.wait_pong(port)
        for vs in [int(v) for v in args.value_sizes.split(",")]:
            keys = min(args.keys, (256 << 20) // vs)  # at most 256 MiB of values
            fill(port, keys, vs)
            time.sleep(0.5)
            for P in [int(x) for x in args.pipelines.split(",")]:
                n = args.requests if vs < 16384 else args.requests // 4
                i0, s0 = spare_info(port), h.status(h.pri_dir, "kv")
                t = time.monotonic()
                subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-c", "50",
                                "-n", str(n), "-r", str(keys), "-d", str(vs), "-P", str(P), "-q"],
                               check=True, capture_output=True, timeout=600)
                secs = time.monotonic() - t
                time.sleep(0.3)  # the last epochs acknowledged
                i1, s1 = spare_info(port), h.status(h.pri_dir, "kv")
                wrote = i1["bytes_declared"] - i0["bytes_declared"]
                committed = i1["bytes_committed"] - i0["bytes_committed"]
                shipped = s1["ship_bytes"] - s0["ship_bytes"]
                epochs = s1["shipped_epochs"] - s0["shipped_epochs"]
                r = {"value_size": vs, "pipeline": P, "keys": keys, "sets": n, "seconds": secs,
                     "epochs": epochs, "bytes_declared": wrote, "bytes_committed": committed,
                     "ship_bytes": shipped,
                     "ratio_shipped_to_declared": shipped / wrote if wrote else None,
                     "shipped_per_epoch": shipped / epochs if epochs else None,
                     "declared_per_epoch": wrote / epochs if epochs else None}
                runs.append(r)
                rows.append([vs, P, keys, n, epochs, f"{wrote / epochs:,.0f}" if epochs else "-",
                             f"{shipped / epochs:,.0f}" if epochs else "-",
                             f"{committed / wrote:.3f}" if wrote else "-",
                             f"{shipped / wrote:.3f}" if wrote else "-"])
                print(f"value {vs} B -P {P}: {epochs} epochs, wrote {wrote} B, shipped {shipped} B "
                      f"(x{shipped / wrote:.3f})", flush=True)
        ok = True
    finally:
        h.close(keep=not ok)
    human = benchlib.table(["value B", "-P", "keys", "SETs", "epochs", "wrote B/epoch",
                            "shipped B/epoch", "committed/wrote", "shipped/wrote"], rows)
    benchlib.emit({"machine": benchlib.machine_facts(ucx_tls=args.tls),
                   "command": benchlib.command_line(), "runs": runs}, human, args.out)


if __name__ == "__main__":
    main()
