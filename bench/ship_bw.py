#!/usr/bin/env python3
"""ship_bw — hot shipping bandwidth (full copy to a restarted standby) beside ucx_perftest.

What it measures, per configuration (UCX_TLS x error mode on both ends):
one hot spare-kv (region 2 GiB) filled with --keys keys of --value-size
bytes by DEBUG POPULATE (default 1,000,000 x 1 KiB: about 1.1 GiB of
image); then, --runs times, the standby is killed (-9) and started again
on the same address, the agent reconnects and ships a full copy of every
page the image ever wrote; the agent's log line "full copy done: ... (X MiB
in S s, R MiB/s)" gives the figure (time from Copy to the standby's Ack,
including the standby's CopyDone handling). The full copy is the bulk path
of shipping: epochs go by the same mechanism (puts on shared memory and
RDMA lanes, Data messages of 1 MiB over TCP lanes: docs/WIRE.md §3).

Baseline in the same run: `ucx_perftest` on the same UCX_TLS, loopback,
with the message size spare uses on that path (Data 1 MiB over TCP:
ucp_am_bw and ucp_put_bw at 1 MiB; puts of 4 MiB over shared memory:
ucp_put_bw at 4 MiB), -e (error handling) when the configuration is PEER.

Configurations: tcp/peer (auto's choice for TCP), tcp/none, shm,tcp/none
(auto's choice on one host: puts over cma/posix), shm,tcp/peer (UCX then
wires tcp only, so it ships by Data messages).

  bench/ship_bw.py --build build --out bench/results/ship_bw.json
  bench/ship_bw.py --build build --keys 100000 --runs 2 --configs tcp/peer,shm+tcp/none  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

CONFIGS = [("tcp", "peer"), ("tcp", "none"), ("shm,tcp", "none"), ("shm,tcp", "peer")]
DONE = re.compile(r"full copy done: the replica is epoch \d+ \(([\d.]+) MiB in ([\d.]+) s, "
                  r"(\d+) MiB/s\)")


class Run:
    def __init__(self, build: Path, tls: str, mode: str, keep: bool):
        self.spare = str(benchlib.binary(build, "spare"))
        self.kv = str(benchlib.binary(build, "spare-kv"))
        self.dir = tempfile.mkdtemp(prefix="spare-shipbw-")
        self.env = dict(os.environ, UCX_TLS=tls)
        self.mode = mode
        self.keep = keep
        self.procs = []
        self.port = benchlib.free_port()
        self.standby = None
        self.start_standby()
        self.agent_dir = f"{self.dir}/agent"
        self.agent_log = f"{self.agent_dir}.log"
        os.makedirs(self.agent_dir)
        self.popen([self.spare, "agent", "--dir", self.agent_dir, "--standby",
                    f"127.0.0.1:{self.port}", "--standby-error-mode", mode], self.agent_log)
        self.wait(lambda: self.cli("status", "--agent", self.agent_dir).returncode == 0,
                  "the agent")

    def popen(self, args, log):
        out = open(log, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=self.env, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def cli(self, *args, timeout=120):
        return subprocess.run([self.spare, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def wait(self, pred, what, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.05)
        benchlib.fail(f"timed out waiting for {what}; agent log:\n{self.tail(self.agent_log)}")

    @staticmethod
    def tail(path, n=30):
        try:
            return "".join(open(path, errors="replace").readlines()[-n:])
        except OSError:
            return ""

    def start_standby(self):
        log = f"{self.dir}/standby.log"
        starts = open(log).read().count("listening on") if os.path.exists(log) else 0
        self.standby = self.popen([self.spare, "standby", "--listen", f"127.0.0.1:{self.port}",
                                   "--name", "bench-standby", "--error-mode", self.mode], log)
        self.wait(lambda: open(log).read().count("listening on") > starts, "the standby")

    def instance(self):
        p = self.cli("status", "--agent", self.agent_dir, "--json")
        return json.loads(p.stdout)["instances"][0] if p.returncode == 0 else None

    def fill(self, keys, value_size):
        kv_port = benchlib.free_port()
        p = self.cli("run", "--agent", self.agent_dir, "--id", "kv", "--policy", "hot", "--",
                     self.kv, "--port", str(kv_port), "--region-size", "2147483648")
        if p.returncode != 0:
            benchlib.fail(f"spare run: {p.stdout}{p.stderr}")
        benchlib.wait_pong(kv_port)
        with benchlib.Resp(kv_port, timeout=600) as r:
            r.command("DEBUG", "POPULATE", str(keys), "key", str(value_size), timeout=600)
        self.wait(lambda: (i := self.instance()) and i["standby"] == "protected"
                  and i["standby_epoch"] >= i["durable_epoch"] > 0, "protected after the fill")

    def full_copy(self):
        """kill -9 of the standby, a new one; returns (MiB, s, MiB/s) of the copy."""
        before = len(DONE.findall(open(self.agent_log, errors="replace").read()))
        self.standby.send_signal(signal.SIGKILL)
        self.standby.wait(timeout=10)
        self.start_standby()
        self.wait(lambda: len(DONE.findall(open(self.agent_log, errors="replace").read())) > before,
                  "the full copy", timeout=300)
        mib, s, rate = DONE.findall(open(self.agent_log, errors="replace").read())[before]
        lanes = re.findall(r"lanes ([\w/.,]+), data by ([\w ]+)\)",
                           open(self.agent_log, errors="replace").read())
        return float(mib), float(s), float(rate), lanes[-1] if lanes else ("?", "?")

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(timeout=10)
        # The instance runs on without its agent: kill it by its environment.
        benchlib.kill_by_agent_env(self.agent_dir)
        if not self.keep:
            subprocess.run(["rm", "-rf", self.dir], check=False)


def perftest(tls, test, size, peer, iters):
    port = benchlib.free_port()
    env = dict(os.environ, UCX_TLS=tls)
    extra = ["-e"] if peer else []
    srv = subprocess.Popen(["ucx_perftest", "-p", str(port), *extra], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ucx_perftest", "127.0.0.1", "-p", str(port), "-t", test, "-s",
                              str(size), "-n", str(iters), *extra], env=env, capture_output=True,
                             text=True, timeout=300).stdout
    finally:
        srv.kill()
        srv.wait()
    final = [l for l in out.splitlines() if l.startswith("Final:")]
    if not final:
        benchlib.fail(f"ucx_perftest {test} {tls}: no Final line:\n{out}")
    return float(final[-1].split()[6])  # bandwidth overall, MB/s (2^20)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--perftest-iters", type=int, default=1000)
    ap.add_argument("--configs", default=",".join(f"{t.replace(',', '+')}/{m}" for t, m in CONFIGS),
                    help="TLS/MODE,... with + for the commas of UCX_TLS (shm+tcp/none)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--out")
    a = ap.parse_args()
    results = []
    for spec in a.configs.split(","):
        tls, mode = spec.rsplit("/", 1)
        tls = tls.replace("+", ",")
        run = Run(Path(a.build), tls, mode, a.keep)
        try:
            run.fill(a.keys, a.value_size)
            copies = [run.full_copy() for _ in range(a.runs)]
        finally:
            run.close()
        lanes, path = copies[-1][3]
        by_data = path.startswith("Data")
        size = (1 << 20) if by_data else (4 << 20)
        base = {"ucp_put_bw": perftest(tls, "ucp_put_bw", size, mode == "peer", a.perftest_iters)}
        if by_data:
            base["ucp_am_bw"] = perftest(tls, "ucp_am_bw", size, mode == "peer", a.perftest_iters)
        rates = [c[2] for c in copies]
        row = {"tls": tls, "mode": mode, "lanes": lanes, "path": path, "msg_bytes": size,
               "copy_mib": [c[0] for c in copies], "copy_s": [c[1] for c in copies],
               "mib_s": benchlib.summarize(rates), "perftest_mb_s": base}
        print(json.dumps(row), flush=True)
        results.append(row)
    rows = []
    for r in results:
        best = max(r["perftest_mb_s"].values())
        rows.append([r["tls"], r["mode"], r["lanes"], r["path"], benchlib.size_label(r["msg_bytes"]),
                     f"{sum(r['copy_mib']) / len(r['copy_mib']):.0f}",
                     f"{r['mib_s']['p50']:.0f}", f"{r['mib_s']['min']:.0f}",
                     ", ".join(f"{k} {v:.0f}" for k, v in r["perftest_mb_s"].items()),
                     f"{r['mib_s']['p50'] / best:.2f}"])
    human = benchlib.table(["UCX_TLS", "error mode", "lanes", "spare ships by", "msg",
                            "copied MiB", "spare MiB/s p50", "min", "ucx_perftest MB/s",
                            "spare / best perftest"], rows)
    benchlib.emit({"machine": benchlib.machine_facts(), "command": benchlib.command_line(),
                   "keys": a.keys, "value_size": a.value_size, "runs": a.runs,
                   "results": results}, human, a.out)


if __name__ == "__main__":
    main()
