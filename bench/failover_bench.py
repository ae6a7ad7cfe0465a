#!/usr/bin/env python3
"""failover_bench — hot failover time and planned-failover pause, on this host.

Each run starts from nothing: a spare host (its agent and `spare standby
--agent`) and a primary agent with `--standby`, all on loopback with the
transport pinned (UCX_TLS, default tcp); one spare-kv under `--policy hot`
filled with DEBUG POPULATE to the live-data size (1 KiB values: 64 MiB =
65,536 keys, 1 GiB = 1,048,576 keys), then a pipelined SET load (the
tests' checker: 3 connections, batches of 16, 48-byte values on fresh
keys) for 0.5 s. Then, by mode:
  kill      kill -9 of the primary agent and the instance at once; the
            figure is kill -> the first SET answered OK by the replacement
            (a client retrying every ms), split into detection (the
            standby's: from the owner's last heartbeat until it suspected it;
            kill -9 closes the agent's liveness connection, hot/live.h), fencing,
            launch and first attach (the spare host's agent), and the rest
            (the client's reconnect, spare-kv's first reply);
  silent    SIGSTOP of the primary agent and kill -9 of the instance: the
            primary host goes silent (nothing closes: a crashed kernel, a
            cut link), so the standby detects it by its timeout; the figure
            is the stop -> the first SET answered OK by the replacement;
  planned   `spare failover` under the load; the figure is the command ->
            the first SET answered OK by the replacement (the client-visible
            pause).
Every run then checks the load's ledger against the replacement (every
acknowledged SET present, nothing never sent), and counts the standby's
suspicions besides the one failover (false suspicions: must be 0).

  bench/failover_bench.py --build build --sizes 64M,1G --runs 20 [--modes kill,silent,planned]

Prints a table (p50/p99 per size and mode) and one JSON summary (--out FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import benchlib  # noqa: E402
from resp_load import PipelinedLoad  # noqa: E402


def resp(port, *args, timeout=2.0):
    """One command over a fresh connection; the reply's first line, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"".join([f"*{len(args)}\r\n".encode()] +
                               [f"${len(a)}\r\n{a}\r\n".encode() for a in map(str, args)]))
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            return buf.split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError:
        return None


def first_ok(port, since, timeout=30.0):
    """Seconds from `since` until a SET is answered +OK."""
    end = time.monotonic() + timeout
    n = 0
    while time.monotonic() < end:
        n += 1
        if resp(port, "SET", f"probe:{n}", "x", timeout=0.5) == "+OK":
            return time.monotonic() - since
        time.sleep(0.001)
    benchlib.fail(f"no SET answered OK on port {port} within {timeout} s")


class Hosts:
    """Spare host (agent + standby) and primary agent, in a temp dir."""

    def __init__(self, build, tls, timeout_ms):
        self.build = Path(build)
        self.spare = str(benchlib.binary(self.build, "spare"))
        self.kv = str(benchlib.binary(self.build, "spare-kv"))
        self.dir = tempfile.mkdtemp(prefix="spare-fobench-")
        self.env = dict(os.environ, UCX_TLS=tls,
                        UCX_NET_DEVICES=os.environ.get("UCX_NET_DEVICES", "lo"))
        self.procs = []
        self.standby_port = benchlib.free_port()
        self.spare_dir = f"{self.dir}/spare-host"
        self.pri_dir = f"{self.dir}/primary"
        self.standby_log = f"{self.dir}/standby.log"
        self.agent(self.spare_dir, [])
        self.popen([self.spare, "standby", "--listen", f"127.0.0.1:{self.standby_port}",
                    "--name", "spare-host", "--agent", self.spare_dir,
                    *([] if timeout_ms is None else ["--timeout-ms", str(timeout_ms)])],
                   self.standby_log)
        self.wait_log(self.standby_log, "listening on")
        self.primary = self.agent(self.pri_dir, ["--standby", f"127.0.0.1:{self.standby_port}"])

    def popen(self, args, log):
        out = open(log, "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=self.env, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def wait_log(self, path, text, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(path) and text in open(path, errors="replace").read():
                return
            time.sleep(0.02)
        benchlib.fail(f"{text!r} never appeared in {path}")

    def agent(self, d, extra):
        os.makedirs(d, exist_ok=True)
        p = self.popen([self.spare, "agent", "--dir", d, *extra], f"{d}.log")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.cli("status", "--agent", d, "--json").returncode == 0:
                return p
            time.sleep(0.02)
        benchlib.fail(f"agent {d} did not answer")

    def cli(self, *args, timeout=60):
        return subprocess.run([self.spare, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def status(self, d, iid):
        p = self.cli("status", "--agent", d, "--json")
        if p.returncode != 0:
            benchlib.fail(f"spare status {d}: {p.stderr}")
        for inst in json.loads(p.stdout)["instances"]:
            if inst["id"] == iid:
                return inst
        benchlib.fail(f"no instance {iid} at {d}")

    def close(self, keep=False):
        # Agents and the standby first (an agent alive would relaunch what
        # is killed next), then every process tied to this run: instances
        # (and their exit helpers) carry SPARE_AGENT=<a dir under ours>.
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        marker = f"SPARE_AGENT={self.dir}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read():
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
        if keep:
            print(f"  logs kept in {self.dir}", flush=True)
        else:
            subprocess.run(["rm", "-rf", self.dir])


def one_run(args, size, mode):
    keys = size // 1024
    h = Hosts(args.build, args.tls, args.timeout_ms)
    ok = False
    try:
        port = benchlib.free_port()
        region = max(256 << 20, size * 2)
        p = h.cli("run", "--agent", h.pri_dir, "--id", "kv", "--policy", "hot", "--",
                  h.kv, "--port", str(port), "--region-size", str(region))
        if p.returncode != 0:
            benchlib.fail(f"spare run: {p.stdout}{p.stderr}")
        benchlib.wait_pong(port)
        t = time.monotonic()
        if resp(port, "DEBUG", "POPULATE", keys, "fill", 1024, timeout=600) != "+OK":
            benchlib.fail("DEBUG POPULATE failed")
        fill_s = time.monotonic() - t
        load = PipelinedLoad(port, conns=3, batch=16, prefix="ld", value_len=48, seed=1)
        load.start()
        time.sleep(0.5)
        before = h.status(h.pri_dir, "kv")
        if mode == "kill":
            os.killpg(h.primary.pid, signal.SIGKILL)
            os.kill(before["pid"], signal.SIGKILL)
            t0 = time.monotonic()
        elif mode == "silent":
            os.killpg(h.primary.pid, signal.SIGSTOP)  # first: it must not restart the instance
            t0 = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)  # (its port must be free for the replacement)
        else:
            t0 = time.monotonic()
            p = h.cli("failover", "--agent", h.pri_dir, "--id", "kv", "--reason", "bench")
            if p.returncode != 0:
                benchlib.fail(f"spare failover: {p.stdout}{p.stderr}")
        total = first_ok(port, t0)
        time.sleep(0.2)
        load.pause()
        rep = load.check(full=True)
        load.stop()
        if not rep.ok:
            benchlib.fail(f"{mode} at {benchlib.size_label(size)}: {rep.summary()}")
        inst = h.status(h.spare_dir, "kv")
        f = inst["failover"] or {}
        # False suspicions: any fencing but the one failover, any suspicion
        # of a live agent by the standby, any of the standby by the agent.
        log = open(h.standby_log, errors="replace").read()
        false_susp = log.count(" fenced (") - 1
        if mode == "planned":
            false_susp += log.count("suspected;")
        false_susp += open(f"{h.pri_dir}.log", errors="replace").read().count(" silent for ")
        if false_susp > 0:
            for path in (h.standby_log, f"{h.pri_dir}.log"):
                for line in open(path, errors="replace"):
                    if "silent for" in line or " fenced (" in line:
                        print(f"  [{os.path.basename(path)}] {line.rstrip()}", flush=True)
        rest = f.get("fencing_ms", 0) + f.get("launch_ms", 0) + (f.get("attach_ms") or 0)
        ok = True
        return {"size": size, "mode": mode, "total_ms": total * 1000,
                "detection_ms": f.get("detection_ms", 0), "detected_by": f.get("detected_by"),
                "fence_launch_attach_ms": rest,
                "epoch": f.get("epoch"), "fill_s": fill_s, "acked": rep.present,
                "false_suspicions": false_susp}
    finally:
        h.close(keep=not ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(benchlib.REPO / "build"))
    ap.add_argument("--sizes", default="64M,1G")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--modes", default="kill,silent,planned")
    ap.add_argument("--tls", default=os.environ.get("UCX_TLS", "tcp"))
    ap.add_argument("--timeout-ms", type=int, default=None,
                    help="the standby's --timeout-ms (default: the standby's own default)")
    ap.add_argument("--out")
    args = ap.parse_args()
    sizes = [benchlib.parse_size(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    runs = []
    for i in range(args.runs):
        for size in sizes:
            for mode in modes:
                r = one_run(args, size, mode)
                runs.append(r)
                print(f"run {i + 1}/{args.runs} {benchlib.size_label(size)} {mode}: "
                      f"{r['total_ms']:.1f} ms (detection {r['detection_ms']:.1f} by "
                      f"{r['detected_by']}, fence+launch+"
                      f"attach {r['fence_launch_attach_ms']:.1f}); {r['acked']} acked present; "
                      f"false suspicions {r['false_suspicions']}", flush=True)
    rows, summary = [], {"machine": benchlib.machine_facts(ucx_tls=args.tls),
                         "command": benchlib.command_line(), "runs": runs, "table": []}
    for size in sizes:
        for mode in modes:
            sel = [r for r in runs if r["size"] == size and r["mode"] == mode]
            tot = benchlib.summarize([r["total_ms"] for r in sel])
            det = benchlib.summarize([r["detection_ms"] for r in sel])
            fla = benchlib.summarize([r["fence_launch_attach_ms"] for r in sel])
            fs = sum(r["false_suspicions"] for r in sel)
            row = {"size": benchlib.size_label(size), "mode": mode, "runs": len(sel),
                   "total_p50": tot["p50"], "total_p99": tot["p99"], "detection_p50": det["p50"],
                   "detection_p99": det["p99"],
                   "fla_p50": fla["p50"], "fla_p99": fla["p99"], "false_suspicions": fs}
            summary["table"].append(row)
            rows.append([row["size"], mode, len(sel), f"{tot['p50']:.1f}", f"{tot['p99']:.1f}",
                         f"{det['p50']:.1f}", f"{det['p99']:.1f}", f"{fla['p50']:.1f}", f"{fla['p99']:.1f}", fs])
    human = benchlib.table(["live data", "mode", "runs", "total p50 ms", "total p99 ms",
                            "detection p50", "p99", "fence+launch+attach p50", "p99",
                            "false suspicions"], rows)
    benchlib.emit(summary, human, args.out)


if __name__ == "__main__":
    main()
