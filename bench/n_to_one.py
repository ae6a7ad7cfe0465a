#!/usr/bin/env python3
"""n_to_one — many hot instances on one standby: its CPU, replication lag, staging occupancy.

Setup (all on this host, UCX_TLS pinned, default tcp): one `spare standby`,
--agents primary agents (default 2) with `--standby`, and --instances hot
spare-kv instances (default 32, region 64 MiB, default staging 8 x 16 MiB)
spread over them. Each instance gets its own paced writer: every 1/--rate
s (default 100 per second) one pipelined batch of --batch (16) SETs with
--value-size (256) byte values on --keys (10,000) keys of its own; spare-kv
commits an epoch per batch, so each instance commits about --rate epochs/s.
After --warmup s, for --seconds s (default 30):

- standby CPU: utime + stime of the standby process over the window, as a
  share of one core; its RSS at the end;
- replication lag as a client sees it: the time from sending a batch to its
  last reply (a reply leaves only once its epoch is applied locally and
  acknowledged by the standby), p50/p99/max over all batches;
- replication lag in epochs: every 200 ms, `spare status --json` of each
  agent; per instance epoch (newest committed) - standby_epoch (newest the
  standby acknowledged); p50/p99/max over samples x instances, and in ms
  (epochs / the instance's epoch rate);
- staging occupancy: those in-flight epochs over the instance's slot count
  (every unacknowledged epoch holds at least one of its staging slots);
- suspicions and failovers during the run (there must be none).

  bench/n_to_one.py --build build --out bench/results/n_to_one.json
  bench/n_to_one.py --build build --instances 4 --seconds 5      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402


def resp(*args) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


class Writer(threading.Thread):
    """One instance's paced, pipelined SET batches; records batch latency."""

    def __init__(self, port, rate, batch, keys, value_size, seed, stop):
        super().__init__(daemon=True)
        self.port, self.rate, self.batch, self.keys = port, rate, batch, keys
        self.value = b"v" * value_size
        self.rng = random.Random(seed)
        self.stop_at = stop
        self.lat = []       # (send time, seconds) per batch
        self.errors = 0
        self.recording = False

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        period = 1.0 / self.rate
        nxt = time.monotonic()
        buf = b""
        while not self.stop_at.is_set():
            req = b"".join(resp("SET", f"k{self.rng.randrange(self.keys)}", self.value)
                           for _ in range(self.batch))
            t0 = time.monotonic()
            s.sendall(req)
            got = 0
            while got < self.batch:
                while b"\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        self.errors += 1
                        return
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                if line != b"+OK":
                    self.errors += 1
                got += 1
            if self.recording:
                self.lat.append(time.monotonic() - t0)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()  # behind: no burst to catch up
        s.close()


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--tls", default="tcp")
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--instances", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100.0, help="batches (epochs) per s per instance")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--standby-timeout-ms", type=int, default=None,
                    help="the standby's --timeout-ms (default: its own default)")
    ap.add_argument("--out")
    a = ap.parse_args()

    build = Path(a.build)
    spare = str(benchlib.binary(build, "spare"))
    kv = str(benchlib.binary(build, "spare-kv"))
    d = tempfile.mkdtemp(prefix="spare-n1-")
    env = dict(os.environ, UCX_TLS=a.tls, UCX_NET_DEVICES=os.environ.get("UCX_NET_DEVICES", "lo"))
    procs = []

    def popen(args, log):
        out = open(log, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        out.close()
        procs.append(p)
        return p

    def cli(*args):
        return subprocess.run([spare, *args], capture_output=True, text=True, env=env, timeout=60)

    stop = threading.Event()
    writers = []
    agents = [f"{d}/agent{i}" for i in range(a.agents)]
    try:
        port = benchlib.free_port()
        standby_log = f"{d}/standby.log"
        standby = popen([spare, "standby", "--listen", f"127.0.0.1:{port}", "--name", "n1",
                         *([] if a.standby_timeout_ms is None
                           else ["--timeout-ms", str(a.standby_timeout_ms)])],
                        standby_log)
        end = time.monotonic() + 10
        while "listening on" not in open(standby_log).read():
            if time.monotonic() > end:
                benchlib.fail("standby did not start")
            time.sleep(0.05)
        for ad in agents:
            os.makedirs(ad)
            popen([spare, "agent", "--dir", ad, "--standby", f"127.0.0.1:{port}"], f"{ad}.log")
        for ad in agents:
            end = time.monotonic() + 10
            while cli("status", "--agent", ad).returncode != 0:
                if time.monotonic() > end:
                    benchlib.fail(f"agent {ad} did not answer")
                time.sleep(0.05)
        ports = []
        for i in range(a.instances):
            ad = agents[i % a.agents]
            p = benchlib.free_port()
            r = cli("run", "--agent", ad, "--id", f"kv{i}", "--policy", "hot", "--", kv,
                    "--port", str(p), "--region-size", "64M")
            if r.returncode != 0:
                benchlib.fail(f"spare run kv{i}: {r.stdout}{r.stderr}")
            benchlib.wait_pong(p)
            ports.append(p)
        for i, p in enumerate(ports):
            w = Writer(p, a.rate, a.batch, a.keys, a.value_size, i, stop)
            w.start()
            writers.append(w)
        time.sleep(a.warmup)
        for w in writers:
            w.recording = True
        status0 = {ad: json.loads(cli("status", "--agent", ad, "--json").stdout) for ad in agents}
        cpu0, t0 = cpu_seconds(standby.pid), time.monotonic()
        lag_epochs, lag_ms, occupancy = [], [], []
        while time.monotonic() - t0 < a.seconds:
            for ad in agents:
                st = json.loads(cli("status", "--agent", ad, "--json").stdout)
                for inst in st["instances"]:
                    e = max(0, inst["epoch"] - inst["standby_epoch"])
                    lag_epochs.append(e)
                    lag_ms.append(1000.0 * e / a.rate)
                    occupancy.append(e / 8.0)  # default slot_count
            time.sleep(0.2)
        cpu1, t1 = cpu_seconds(standby.pid), time.monotonic()
        status1 = {ad: json.loads(cli("status", "--agent", ad, "--json").stdout) for ad in agents}
        for w in writers:
            w.recording = False
        rss = benchlib.proc_rss_kib(standby.pid)
        stop.set()
        for w in writers:
            w.join(timeout=10)
        epochs = sum(i1["standby_epoch"] - i0["standby_epoch"]
                     for ad in agents
                     for i0, i1 in zip(status0[ad]["instances"], status1[ad]["instances"]))
        lat = [x * 1000 for w in writers for x in w.lat]
        log = open(standby_log, errors="replace").read()
        summary = {
            "machine": benchlib.machine_facts(), "command": benchlib.command_line(),
            "tls": a.tls, "agents": a.agents, "instances": a.instances, "rate": a.rate,
            "batch": a.batch, "value_size": a.value_size, "seconds": t1 - t0,
            "epochs_acked_per_s": epochs / (t1 - t0),
            "standby_cpu_share": (cpu1 - cpu0) / (t1 - t0),
            "standby_rss_kib": rss,
            "batch_latency_ms": benchlib.summarize(lat),
            "lag_epochs": benchlib.summarize(lag_epochs),
            "lag_ms_from_epochs": benchlib.summarize(lag_ms),
            "staging_occupancy": benchlib.summarize(occupancy),
            "writer_errors": sum(w.errors for w in writers),
            "standby_suspicions": log.count("suspected;"),
            "failovers": log.count("fenced ("),
        }
        human = benchlib.table(
            ["instances", "epochs acked/s", "standby CPU (cores)", "batch p50 ms", "p99", "max",
             "lag epochs p50", "p99", "lag ms p99", "staging occ p99", "suspicions", "errors"],
            [[a.instances, f"{summary['epochs_acked_per_s']:.0f}",
              f"{summary['standby_cpu_share']:.2f}",
              f"{summary['batch_latency_ms']['p50']:.2f}",
              f"{summary['batch_latency_ms']['p99']:.2f}",
              f"{summary['batch_latency_ms']['max']:.1f}",
              f"{summary['lag_epochs']['p50']:.0f}", f"{summary['lag_epochs']['p99']:.0f}",
              f"{summary['lag_ms_from_epochs']['p99']:.0f}",
              f"{summary['staging_occupancy']['p99']:.2f}",
              summary["standby_suspicions"], summary["writer_errors"]]])
        benchlib.emit(summary, human, a.out)
        if summary["writer_errors"] or summary["standby_suspicions"] or summary["failovers"]:
            sys.exit(1)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=10)
        benchlib.kill_by_agent_env(f"{d}/")
        if not a.keep:
            subprocess.run(["rm", "-rf", d], check=False)


if __name__ == "__main__":
    main()
