#!/usr/bin/env python3
"""spare's fault-injection campaign: real processes on three simulated hosts,
faults at random moments, and a checker over every request and reply.

    tests/chaos/chaos.py --quick                 # ~2 minutes of faults
    tests/chaos/chaos.py --duration 3600         # long mode: as long as given
    tests/chaos/chaos.py --seed 1234 --quick     # replays seed 1234's schedule
    SPARE_BIN=DIR picks the binaries (spare, spare-kv; default build/bin);
    --json FILE writes the report, --gap-ms LO,HI the pause between faults

Hosts (tests/netns.py: network namespaces on one bridge, UCX_TLS=tcp over
the hosts' link `spare0`, clients in the root namespace over each host's
`cli0`): two primary hosts `pa` and `pb`, each with an agent protecting
its instances with the standby, and the spare host `spr` with the standby
and its own agent. On each primary a hot and a local spare-kv instance,
each under a mixed pipelined load from 3 connections (history.py: SET,
DEL, MSET on keys each connection owns, INCR on shared counters, GET of
anything), every command and reply recorded.

Faults, one at a time, each chosen, aimed and timed by the seed:
  kill-instance       kill -9 of an instance (wherever it runs)
  kill-agent          kill -9 of an agent alone (pa, pb or spr), restarted
  kill-host-procs     kill -9 of a primary's agent with its instances
  host-crash          the same with the host's links down for a while
  kill-standby        kill -9 of the standby, restarted (full copies follow)
  stop-short          SIGSTOP/SIGCONT shorter than the 30 ms timeout, of an
                      agent, the standby or an instance
  stop-long           the same, 60 ms to 600 ms
  cut-link            a primary's link to the spare host: ip link set down,
                      or nftables drops in one direction or both
  cut-clients         a host's link to the clients, the same ways
  netem               loss (nftables, a random share) or a slow link (tbf)
                      on either link of a host: this kernel has no netem
Between faults the campaign waits until every instance answers and every
hot instance on a primary is protected again (a second fault during the
recovery from the first is not what this campaign covers: a host death
during a full copy is a documented limit). An instance that has failed
over to the spare host, or has run for --rotate-s, ends its incarnation:
its load stops, its final state is read and checked, and a new
incarnation with fresh keys starts on its primary.

Policy local protects against an instance's crash, not its host's: a
local instance whose agent died with it (kill-host-procs, host-crash), or a
failed-over one on the spare host (protected locally only there) when the
spare host's agent dies with it, is reported as expected unavailability —
counted, never checked as a pass or a loss.

Every run prints its seed first, each fault as it is injected, and one
verdict line; a failing seed replays the same schedule of faults (timings
of the processes themselves differ). Exit 0 on PASS, 1 on anomalies.
"""

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)
sys.path.insert(0, HERE)
if "SPARE_BIN" not in os.environ:
    os.environ["SPARE_BIN"] = os.path.join(os.path.dirname(TESTS), "build", "bin")

from history import Workload  # noqa: E402
from netns import Hosts  # noqa: E402
from spare_harness import SPARE, SPARE_KV, Harness, redis, tail  # noqa: E402

STANDBY_PORT = 7700
TIMEOUT_MS = 30  # the standby's default heartbeat timeout

KINDS = {  # kind: weight
    "kill-instance": 14, "kill-agent": 8, "kill-host-procs": 5, "host-crash": 4,
    "kill-standby": 5, "stop-short": 10, "stop-long": 8, "cut-link": 12,
    "cut-clients": 8, "netem": 8,
}


class Cleanups:
    """What Harness and Hosts need of a unittest.TestCase."""

    def __init__(self):
        self._fns = []

    def addCleanup(self, fn, *args):
        self._fns.append((fn, args))

    def id(self):
        return "chaos.run"

    def close(self):
        while self._fns:
            fn, args = self._fns.pop()
            try:
                fn(*args)
            except Exception as e:  # keep cleaning
                print(f"chaos: cleanup {fn}: {e}", file=sys.stderr)


def sh(args, check=True, timeout=20):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p


class Slot:
    """A workload's place: its home host and policy; one incarnation at a time."""

    def __init__(self, name, home, policy, index):
        self.name, self.home, self.policy, self.index = name, home, policy, index
        self.n = 0
        self.iid = None
        self.port = None
        self.wl = None
        self.started = 0.0
        self.moved = False
        self.expected_loss = None  # why this incarnation is beyond its policy


class Campaign:
    def __init__(self, seed, duration, gap, rotate_s, log=print):
        self.seed = seed
        self.rng = random.Random(seed)
        self.duration = duration
        self.gap = gap
        self.rotate_s = rotate_s
        self.log = log
        self.ctx = Cleanups()
        self.faults = []
        self.by_kind = collections.Counter()
        self.violations = []
        self.counts = collections.Counter()
        self.expected = []      # (incarnation, why, seconds unavailable)
        self.failovers = 0
        self.incarnations = 0
        self.unrecovered = []
        self.t0 = time.monotonic()

    # --- the cluster -----------------------------------------------------

    def setup(self):
        os.environ["UCX_TLS"] = "tcp"
        os.environ["UCX_NET_DEVICES"] = "spare0"
        self.hosts = Hosts(self.ctx, ["pa", "pb", "spr"])
        self.h = {}
        self.h["spr"] = Harness(self.ctx, name="chaos-spr")
        self.h["spr"].start_agent(wrap=self.hosts.wrap("spr"))
        self.standby_at = f"{self.hosts.peer_ip('spr')}:{STANDBY_PORT}"
        self.standby_log = os.path.join(self.h["spr"].dir, "standby.log")
        self.standby = None
        self.standby_starts = 0
        self.start_standby()
        for host in ("pa", "pb"):
            self.h[host] = Harness(self.ctx, name=f"chaos-{host}")
            self.start_agent(host)
        self.slots = [Slot("h1", "pa", "hot", 0), Slot("l1", "pa", "local", 1),
                      Slot("h2", "pb", "hot", 2), Slot("l2", "pb", "local", 3)]
        for s in self.slots:
            self.start_incarnation(s)

    def start_agent(self, host):
        extra = [] if host == "spr" else ["--standby", self.standby_at]
        for attempt in range(3):
            try:
                self.h[host].start_agent(extra=extra, wrap=self.hosts.wrap(host), timeout=20)
                return
            except AssertionError as e:
                links = sh([*self.hosts.wrap(host), "ip", "-o", "addr", "show"], check=False).stdout
                self.log(f"  agent of {host} did not start (attempt {attempt + 1}): "
                         f"{str(e)[:600]}\n  {host} addresses:\n{links}")
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def start_standby(self):
        spr = self.h["spr"]
        try:
            start = os.path.getsize(self.standby_log)
        except OSError:
            start = 0
        self.standby = spr.popen(
            [*self.hosts.wrap("spr"), SPARE, "standby", "--listen", self.standby_at, "--name",
             "spare-host", "--agent", spr.dir, "--dir", os.path.join(spr.dir, "standby-state")],
            log=self.standby_log)
        end = time.monotonic() + 20
        while True:  # its "listening on" line, written after `start`
            with open(self.standby_log, "rb") as f:
                f.seek(start)
                if b"listening on" in f.read():
                    break
            if self.standby.poll() is not None or time.monotonic() > end:
                raise RuntimeError("standby did not start:\n" + tail(self.standby_log))
            time.sleep(0.02)
        self.standby_starts += 1

    def status(self, host):
        try:
            p = self.h[host].spare("status", "--agent", self.h[host].dir, "--json", timeout=10)
            return json.loads(p.stdout) if p.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError):
            return None

    def instance(self, host, iid):
        st = self.status(host)
        for i in (st or {}).get("instances", []):
            if i["id"] == iid:
                return i
        return None

    def where(self, s):
        """(host, status) of the running process of slot s's incarnation, or (None, None)."""
        for host in ([s.home, "spr"] if s.policy == "hot" else [s.home]):
            i = self.instance(host, s.iid)
            if i and i["state"] == "running" and i["pid"] and not i.get("fenced"):
                return host, i
        return None, None

    def start_incarnation(self, s):
        s.n += 1
        s.iid = f"{s.name}-{s.n}"
        s.port = 7100 + 100 * s.index + s.n % 100
        s.moved = False
        s.expected_loss = None
        h = self.h[s.home]
        h.run(s.iid, [SPARE_KV, "--port", str(s.port), "--bind", "0.0.0.0", "--region-size",
                      "16M"], policy=s.policy)
        h.wait_pong(s.port, host=self.hosts.client_ip(s.home), timeout=20)
        if s.policy == "hot":
            h.wait_instance(s.iid, lambda i: i["standby"] == "protected", timeout=30,
                            what="protected by the standby")
        hosts = [self.hosts.client_ip(s.home)]
        if s.policy == "hot":
            hosts.append(self.hosts.client_ip("spr"))
        s.wl = Workload(s.iid, s.port, hosts, self.rng.random())
        s.wl.start()
        s.started = time.monotonic()
        self.incarnations += 1

    def end_incarnation(self, s, final=False):
        wl = s.wl
        if not wl.stop():
            self.violations.append(f"{s.iid}: a client thread did not stop")
        if s.expected_loss:
            self.expected.append((s.iid, s.expected_loss))
            self.log(f"  {s.iid}: beyond its policy ({s.expected_loss}): expected "
                     "unavailability, not checked")
        else:
            if not wl.final_read(deadline_s=30):
                self.violations.append(f"{s.iid}: its final state could not be read in 30 s")
            n, v = wl.check()
            self.counts.update(n)
            self.violations.extend(v)
            if s.moved:
                self.failovers += 1
            self.log(f"  {s.iid}: {n['ops']} commands, {n['acked_writes']} acknowledged writes,"
                     f" {n['incrs_acked']} INCRs, {n['reads_checked']} reads checked,"
                     f" {n['unknown']} of unknown outcome, {len(wl.first_reply)} host(s) "
                     f"answered; anomalies {len(v)}")
            for msg in v[:10]:
                self.log(f"    ANOMALY {msg}")
        for host in ([s.home, "spr"] if s.policy == "hot" else [s.home]):
            self.h[host].spare("stop", "--agent", self.h[host].dir, "--id", s.iid, timeout=30)
        if not final:
            self.start_incarnation(s)

    # --- faults ----------------------------------------------------------

    def agent_pid(self, host):
        return self.h[host].agent_proc.pid

    def pids_of(self, host):
        st = self.status(host) or {"instances": []}
        return [i["pid"] for i in st["instances"] if i["state"] == "running" and i["pid"]]

    def kill(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart_agent(self, host):
        p = self.h[host].agent_proc
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        self.start_agent(host)

    def mark_local_loss(self, host, why):
        for s in self.slots:
            if s.policy == "local" and s.home == host and not s.expected_loss:
                s.expected_loss = why
            if host == "spr" and s.moved and not s.expected_loss:
                s.expected_loss = why + " (a failed-over instance is protected locally only)"

    def nft(self, host, dev, direction, percent=100):
        """Drops packets in and/or out of `dev` on `host` (all, or a random share)."""
        share = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
        chains = []
        if direction in ("in", "both"):
            chains.append(f'chain i {{ type filter hook input priority 0; iifname "{dev}" '
                          f'{share}drop; }}')
        if direction in ("out", "both"):
            chains.append(f'chain o {{ type filter hook output priority 0; oifname "{dev}" '
                          f'{share}drop; }}')
        rules = "table inet chaos {\n" + "\n".join(chains) + "\n}\n"
        subprocess.run([*self.hosts.wrap(host), "nft", "-f", "-"], input=rules, text=True,
                       check=True, capture_output=True, timeout=20)

    def nft_heal(self, host):
        sh([*self.hosts.wrap(host), "nft", "delete", "table", "inet", "chaos"], check=False)

    def link(self, host, dev, up):
        sh([*self.hosts.wrap(host), "ip", "link", "set", dev, "up" if up else "down"])
        # Up: until it has carrier (a booting host starts its agent once the
        # network is up; UCX refuses a device without carrier: "no usable
        # transports/devices").
        end = time.monotonic() + 5
        while up and time.monotonic() < end:
            out = sh([*self.hosts.wrap(host), "ip", "-o", "link", "show", dev], check=False).stdout
            if "LOWER_UP" in out and "NO-CARRIER" not in out:
                break
            time.sleep(0.01)

    def cut(self, host, dev, how, seconds):
        if how == "link":
            self.link(host, dev, False)
        else:
            self.nft(host, dev, how)
        time.sleep(seconds)
        if how == "link":
            self.link(host, dev, True)
        else:
            self.nft_heal(host)

    def inject(self, kind):
        r = self.rng
        if kind == "kill-instance":
            s = r.choice(self.slots)
            host, inst = self.where(s)
            if not host:
                return f"{s.iid}: not running now, skipped"
            self.kill(inst["pid"])
            return f"{s.iid} on {host} (pid {inst['pid']})"
        if kind == "kill-agent":
            host = r.choice(["pa", "pb", "spr"])
            delay = r.uniform(0, 0.3)
            self.h[host].agent_proc.kill()
            time.sleep(delay)
            self.restart_agent(host)
            return f"{host}, restarted after {delay * 1000:.0f} ms"
        if kind in ("kill-host-procs", "host-crash"):
            host = r.choice(["pa", "pb"])
            down = r.uniform(0.3, 2.0) if kind == "host-crash" else r.uniform(0, 0.3)
            pids = self.pids_of(host)
            if kind == "host-crash":
                self.link(host, "cli0", False)
                self.link(host, "spare0", False)
            self.h[host].agent_proc.kill()
            for pid in pids:
                self.kill(pid)
            self.mark_local_loss(host, f"{kind} of {host}")
            time.sleep(down)
            if kind == "host-crash":
                self.link(host, "spare0", True)
                self.link(host, "cli0", True)
            self.restart_agent(host)
            return f"{host} ({len(pids)} instances), back after {down * 1000:.0f} ms"
        if kind == "kill-standby":
            delay = r.uniform(0, 1.0)
            self.standby.kill()
            self.standby.wait(timeout=10)
            time.sleep(delay)
            self.start_standby()
            return f"restarted after {delay * 1000:.0f} ms"
        if kind in ("stop-short", "stop-long"):
            ms = r.uniform(3, 20) if kind == "stop-short" else r.uniform(60, 600)
            what = r.choice(["agent-pa", "agent-pb", "agent-spr", "standby", "instance"])
            if what == "standby":
                pid, name = self.standby.pid, "standby"
            elif what == "instance":
                s = r.choice(self.slots)
                host, inst = self.where(s)
                if not host:
                    return f"{s.iid}: not running now, skipped"
                pid, name = inst["pid"], f"{s.iid} on {host}"
            else:
                host = what.split("-")[1]
                pid, name = self.agent_pid(host), f"agent of {host}"
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(ms / 1000)
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            return f"{name} for {ms:.0f} ms"
        if kind in ("cut-link", "cut-clients"):
            host = r.choice(["pa", "pb"]) if kind == "cut-link" else r.choice(["pa", "pb", "spr"])
            dev = "spare0" if kind == "cut-link" else "cli0"
            how = r.choice(["link", "in", "out", "both"])
            secs = r.uniform(0.05, 1.5)
            self.cut(host, dev, how, secs)
            return f"{host} {dev} ({'ip link down' if how == 'link' else 'nft drop ' + how}) for {secs * 1000:.0f} ms"
        if kind == "netem":
            # This kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset, no
            # modules): loss is nftables dropping a random share of packets
            # (numgen), delay is a slow link (tbf: packets queue up to its
            # latency bound, the rest are dropped).
            host = r.choice(["pa", "pb", "spr"])
            dev = r.choice(["spare0", "cli0"])
            secs = r.uniform(0.5, 3)
            if r.random() < 0.5:
                pct = r.randint(1, 10)
                how = r.choice(["in", "out", "both"])
                self.nft(host, dev, how, pct)
                time.sleep(secs)
                self.nft_heal(host)
                return f"{host} {dev} loss {pct}% ({how}) for {secs:.1f} s"
            rate = r.choice(["2mbit", "10mbit", "50mbit"])
            lat = r.randint(5, 50)
            sh([*self.hosts.wrap(host), "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                rate, "burst", "16kb", "latency", f"{lat}ms"])
            try:
                time.sleep(secs)
            finally:
                sh([*self.hosts.wrap(host), "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            return f"{host} {dev} slow link (tbf {rate}, queue up to {lat} ms) for {secs:.1f} s"
        raise ValueError(kind)

    def check_daemons(self):
        """A daemon that died without being killed is an anomaly (a crash);
        it is started again so the campaign goes on."""
        for host in ("pa", "pb", "spr"):
            p = self.h[host].agent_proc
            if p.poll() is not None:
                self.unrecovered.append(
                    f"the agent of {host} died by itself (exit {p.returncode}):\n"
                    + tail(os.path.join(self.h[host].dir, "agent.log"), 30))
                self.start_agent(host)
        if self.standby.poll() is not None:
            self.unrecovered.append(f"the standby died by itself (exit {self.standby.returncode}):"
                                    "\n" + tail(self.standby_log, 30))
            self.start_standby()

    def settle(self, timeout=40):
        """Until every incarnation answers and hot ones at home are protected."""
        self.check_daemons()
        end = time.monotonic() + timeout
        pending = [s for s in self.slots if not s.expected_loss]
        while pending and time.monotonic() < end:
            still = []
            for s in pending:
                host, inst = self.where(s)
                ok = False
                if host:
                    rc, out = redis(s.port, "PING", timeout=2, host=self.hosts.client_ip(host))
                    ok = rc == 0 and out == "PONG"
                    if host == "spr":
                        s.moved = True
                    elif s.policy == "hot":
                        ok = ok and inst["standby"] == "protected"
                if not ok:
                    still.append(s)
            pending = still
            if pending:
                time.sleep(0.05)
        for s in pending:
            host, inst = self.where(s)
            seen = {h: (lambda i: i and {k: i.get(k) for k in ("state", "pid", "fenced",
                                                                "standby", "reason")})(
                self.instance(h, s.iid)) for h in (s.home, "spr")}
            ping = (redis(s.port, "PING", timeout=2, host=self.hosts.client_ip(host))
                    if host else None)
            self.unrecovered.append(f"{s.iid}: not serving (or not protected) {timeout} s "
                                    f"after the last fault healed: runs on {host}, PING {ping};"
                                    f" status {seen}")
        return not pending

    # --- the run ---------------------------------------------------------

    def run(self):
        self.log(f"chaos seed {self.seed} (--seed {self.seed} replays this schedule), "
                 f"{self.duration:.0f} s of faults")
        self.setup()
        kinds, weights = zip(*KINDS.items())
        end = time.monotonic() + self.duration
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(*self.gap))
            kind = self.rng.choices(kinds, weights)[0]
            t = time.monotonic() - self.t0
            what = self.inject(kind)
            skipped = what.endswith("skipped")
            if not skipped:
                self.by_kind[kind] += 1
            self.faults.append((round(t, 3), kind, what))
            self.log(f"[{t:8.2f}] {kind}: {what}")
            if not self.settle():
                self.log(f"  not recovered: {self.unrecovered[-1]}")
                break
            now = time.monotonic()
            for s in self.slots:
                if s.moved or s.expected_loss or now - s.started > self.rotate_s:
                    self.end_incarnation(s)
                    self.settle()
        for s in self.slots:
            self.end_incarnation(s, final=True)
        self.cross_check()
        return self.report()

    def cross_check(self):
        """The standby's own count of failovers against the ones seen."""
        log = tail(self.standby_log, 100000)
        said = log.count("failed over to the spare host")
        self.standby_failovers = said

    def report(self):
        anomalies = self.violations + self.unrecovered
        rep = {
            "seed": self.seed,
            "seconds": round(time.monotonic() - self.t0, 1),
            "faults": sum(self.by_kind.values()),
            "faults_by_kind": dict(self.by_kind),
            "failovers_seen": self.failovers,
            "failovers_standby_log": getattr(self, "standby_failovers", None),
            "incarnations": self.incarnations,
            "expected_unavailability": [{"incarnation": i, "why": w} for i, w in self.expected],
            "commands": self.counts["ops"],
            "acknowledged_writes_checked": self.counts["acked_writes"],
            "incrs_checked": self.counts["incrs_acked"],
            "reads_checked": self.counts["reads_checked"],
            "unknown_outcome": self.counts["unknown"],
            "anomalies": anomalies,
            "fault_log": self.faults,
        }
        verdict = "PASS" if not anomalies else "FAIL"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        self.log(f"chaos seed {self.seed}: {verdict}: {rep['faults']} faults ({kinds}); "
                 f"{self.failovers} failovers; {rep['acknowledged_writes_checked']} acknowledged "
                 f"writes, {rep['incrs_checked']} INCRs and {rep['reads_checked']} reads checked "
                 f"over {self.incarnations} incarnations; {len(self.expected)} expected "
                 f"unavailabilities; anomalies {len(anomalies)}")
        rep["verdict"] = verdict
        return rep

    def close(self):
        if self.violations or self.unrecovered:  # keep the daemons' logs for the post-mortem
            os.environ["SPARE_KEEP_TMP"] = "1"
        for host in ("pa", "pb", "spr"):
            try:
                self.nft_heal(host)
            except Exception:
                pass
        for s in getattr(self, "slots", []):
            if s.wl:
                s.wl.stop(timeout=2)
        self.ctx.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="120 s of faults (the test suite's run)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of faults")
    ap.add_argument("--gap-ms", default="200,1200", help="LO,HI pause between faults")
    ap.add_argument("--rotate-s", type=float, default=60)
    ap.add_argument("--json", default=None, help="write the report here")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time())
    duration = a.duration if a.duration is not None else (120 if a.quick else 600)
    lo, hi = (float(x) / 1000 for x in a.gap_ms.split(","))
    c = Campaign(seed, duration, (lo, hi), a.rotate_s)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        rep = c.run()
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        rep = c.report()
        rep["verdict"] = "INTERRUPTED"
    finally:
        c.close()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep, f, indent=1)
    return 0 if rep["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
