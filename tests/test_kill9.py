"""kill -9 spare-kv at random moments under write load; nothing acknowledged is lost.

Load: a sequential writer (one `redis-cli` per command: SET k:<n> <value>,
and INCR counter) that records which commands were acknowledged, a
pipelined loader (resp_load.PipelinedLoad: 4 connections, batches of 16
SETs of p:<conn>:<seq>, replies parsed and matched exactly), plus
`redis-benchmark -t set` on key:* running concurrently. After each kill the
agent restarts spare-kv from its committed image; once it answers PING the
loader is paused and the test checks, with redis-cli and the loader's
pipelined MGETs:
  - every acknowledged SET is present with exactly its value;
  - the counter is >= the last acknowledged INCR value and no larger than
    the INCRs that could have reached the server since (redis-cli resends a
    command once when its connection breaks, so one invocation may apply
    twice); acknowledged INCR values strictly increase over the whole run;
  - every pipelined SET answered +OK is present with exactly its value, one
    whose connection broke before its reply is absent or holds its value
    (PipelinedLoad.check: every kill reads the SETs sent since the last check
    and those still of unknown outcome; every LOAD_FULL_EVERY kills, all);
  - no key exists that was never sent (k:n beyond the last one sent,
    p:<conn>:<seq> past each connection's last, values other than the one
    sent, and — every few kills — DBSIZE equal to the keys accounted for).
With SPARE_KILL9_FILL=N the server first holds a large data set (DEBUG
POPULATE N fill 1024: fill:<j> = "value:<j>" padded to 1 KiB), redis-benchmark
overwrites random keys of an N-key space with SPARE_KILL9_VALUE_LEN-byte
values, and the pipelined loader writes values of that length too; every
full check also reads back every fill key (acknowledged by DEBUG POPULATE's
+OK, so none may be lost or changed).
Environment: SPARE_KILLS (default 50), SPARE_TRACKER (passed to spare-kv),
SPARE_KV_WRITES (spare-kv --writes: declared, the default, or pages),
SPARE_VERIFY_WRITES (1: spare-kv checks every commit against the page
tracker, spare/runtime.h), SPARE_KILL9_FILL, SPARE_KILL9_VALUE_LEN.
"""

import os
import platform
import random
import statistics
import threading
import time
import unittest

from resp_load import Conn, PipelinedLoad, encode
from spare_harness import (REDIS_BENCHMARK, SPARE_KV, Harness, children, free_port, mget,
                           proc_stat, redis)

KILLS = int(os.environ.get("SPARE_KILLS", "50"))
SEED = int(os.environ.get("SPARE_SEED", str(int(time.time()))))
FILL = int(os.environ.get("SPARE_KILL9_FILL", "0"))
FILL_VALUE_LEN = 1024
BENCH_KEYS = max(100000, FILL)
# redis-benchmark -d (default 3); one fixed value for all its keys.
BENCH_VALUE_LEN = int(os.environ.get("SPARE_KILL9_VALUE_LEN", "3"))
KV_WRITES = os.environ.get("SPARE_KV_WRITES", "declared")
FULL_CHECK_EVERY = 5
LOAD_FULL_EVERY = 25  # reading every p:* key costs ~4 us each; DBSIZE covers them in between


class Ledger:
    """What the sequential writer sent and what was acknowledged."""

    def __init__(self):
        self.sent = {}    # n -> value of SET k:n (sent, maybe not applied)
        self.acked = {}   # n -> value, acknowledged with OK
        self.incr_calls = 0        # redis-cli INCR invocations
        self.calls_at_ack = 0      # incr_calls when the last ack arrived
        self.last_incr = 0         # last acknowledged INCR value
        self.incr_acks = 0
        self.errors = []           # broken invariants seen by the writer


class Writer(threading.Thread):
    """Issues SET/INCR with redis-cli, one process per command, until stopped."""

    def __init__(self, port, ledger, rng):
        super().__init__(daemon=True)
        self.port, self.ledger, self.rng = port, ledger, rng
        self.halt = threading.Event()

    def run(self):
        lg = self.ledger
        while not self.halt.is_set():
            if self.rng.random() < 0.25:
                lg.incr_calls += 1
                rc, out = redis(self.port, "INCR", "counter", timeout=15)
                if rc == 0 and out.lstrip("-").isdigit():
                    value = int(out)
                    if value <= lg.last_incr:
                        lg.errors.append(f"INCR acknowledged {value} after {lg.last_incr}")
                    lg.last_incr, lg.calls_at_ack = value, lg.incr_calls
                    lg.incr_acks += 1
            else:
                n = len(lg.sent)
                value = f"v:{n}:{self.rng.getrandbits(48):x}"
                lg.sent[n] = value
                rc, out = redis(self.port, "SET", f"k:{n}", value, timeout=15)
                if rc == 0 and out == "OK":
                    lg.acked[n] = value

    def stop(self):
        self.halt.set()
        self.join(timeout=30)
        if self.is_alive():
            raise AssertionError("writer did not stop within 30 s (a redis-cli call hangs?)")


class Kill9Test(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.start_agent()
        self.port = free_port()
        self.rng = random.Random(SEED)
        self.load_check_s = 0.0
        print(f"seed {SEED}, kills {KILLS}, tracker {os.environ.get('SPARE_TRACKER', 'default')}")

    def start_bench(self):
        return self.h.popen([REDIS_BENCHMARK, "-p", str(self.port), "-t", "set", "-r",
                             str(BENCH_KEYS), "-d", str(BENCH_VALUE_LEN), "-n", "10000000",
                             "-c", "4", "-q"])

    def fill_value(self, j):
        v = f"value:{j}".encode()
        return v + b"\0" * (FILL_VALUE_LEN - len(v))

    def check_fill(self):
        """Every key DEBUG POPULATE acknowledged is there with its value."""
        conn = Conn(self.port, timeout=60)
        try:
            for lo in range(0, FILL, 5000):
                hi = min(FILL, lo + 5000)
                conn.send(encode("MGET", *[f"fill:{j}" for j in range(lo, hi)]))
                got = conn.read_reply()
                self.assertEqual(len(got), hi - lo)
                for j, v in zip(range(lo, hi), got):
                    if v != self.fill_value(j):
                        self.fail(f"acknowledged fill:{j} lost or changed: {v!r:.80}")
        finally:
            conn.close()

    def check(self, lg, load, full, load_full):
        """The invariants of the module docstring, against the live server.

        Returns the loader's CheckReport; load must be paused.
        """
        self.assertEqual(lg.errors, [])
        start = time.monotonic()
        rep = load.check(self.port, full=load_full)
        self.load_check_s += time.monotonic() - start
        self.assertEqual(rep.violations[:20], [], f"pipelined SETs: {rep.summary()}")
        n_sent = len(lg.sent)
        keys = [f"k:{n}" for n in range(n_sent + 50)]
        values = mget(self.port, keys)
        present = 0
        for n, got in enumerate(values):
            if n in lg.acked:
                self.assertEqual(got, lg.acked[n], f"acknowledged k:{n} lost or changed")
            elif n < n_sent:
                self.assertIn(got, (None, lg.sent[n]), f"k:{n} holds a value never sent")
            else:
                self.assertIsNone(got, f"k:{n} exists but was never sent")
            present += got is not None
        rc, out = redis(self.port, "GET", "counter")
        self.assertEqual(rc, 0)
        counter, has_counter = (int(out), 1) if out else (0, 0)
        self.assertGreaterEqual(counter, lg.last_incr, "acknowledged INCR lost")
        most = lg.last_incr + 2 * (lg.incr_calls - lg.calls_at_ack)
        self.assertLessEqual(counter, most, "counter counts INCRs never sent")
        if not full:
            return rep
        bench = mget(self.port, [f"key:{i:012d}" for i in range(BENCH_KEYS)])
        kinds = {v for v in bench if v is not None}
        self.assertLessEqual(len(kinds), 1, f"key:* values redis-benchmark never wrote: {kinds}")
        self.assertTrue(all(len(v) == BENCH_VALUE_LEN for v in kinds), kinds)
        bench_present = sum(v is not None for v in bench)
        self.check_fill()
        rc, out = redis(self.port, "DBSIZE")
        self.assertEqual(rc, 0)
        self.assertEqual(int(out), present + rep.present + bench_present + has_counter + FILL,
                         "DBSIZE counts keys that were never sent (or lost acknowledged p:* keys)")
        print(f"  full check: DBSIZE {out} = {present} k:* + {rep.present} p:*"
              f" + {bench_present} key:* + {has_counter} counter + {FILL} fill:*")
        return rep

    def test_kill9_under_write_load(self):
        h, lg = self.h, Ledger()
        pid, _ = h.run("kv", [SPARE_KV, "--port", str(self.port), "--writes", KV_WRITES],
                       extra=["--max-restarts", "100000", "--restart-window", "1"])
        h.wait_pong(self.port)
        if FILL:
            rc, out = redis(self.port, "DEBUG", "POPULATE", str(FILL), "fill",
                            str(FILL_VALUE_LEN), timeout=300)
            self.assertEqual((rc, out.strip()), (0, "OK"))
            rc, out = redis(self.port, "INFO", "spare")
            print("after fill: " + " ".join(
                ln for ln in out.splitlines()
                if ln.startswith(("writes:", "bytes_committed:", "commits:", "pages_verified:"))))
        inst = h.instance("kv")
        tracker = os.environ.get("SPARE_TRACKER")
        if tracker == "mprotect":
            self.assertEqual(inst["tracker"], "mprotect")
        elif tracker == "uffd" or tuple(map(int, platform.release().split(".")[:2])) >= (6, 7):
            self.assertEqual(inst["tracker"], "uffd-wp")

        # A few hundred acknowledged keys before the first kill.
        base = {n: f"v:{n}:base" for n in range(300)}
        rc, out = redis(self.port, stdin="".join(f"SET k:{n} {v}\n" for n, v in base.items()))
        self.assertEqual((rc, out.splitlines()), (0, ["OK"] * len(base)))
        lg.sent.update(base)
        lg.acked.update(base)

        load = PipelinedLoad(self.port, conns=4, batch=16, seed=self.rng.random(),
                             value_len=max(24, BENCH_VALUE_LEN))
        self.addCleanup(load.stop)
        load.start(paused=True)
        restart_s, load_checked = [], 0
        for kill in range(1, KILLS + 1):
            bench = self.start_bench()
            writer = Writer(self.port, lg, random.Random(self.rng.random()))
            writer.start()
            load.resume()
            time.sleep(self.rng.uniform(0.020, 0.250))
            os.kill(pid, 9)
            killed_at = time.monotonic()
            h.wait_pong(self.port, timeout=20)
            restart_s.append(time.monotonic() - killed_at)
            writer.stop()
            load.pause()
            bench.kill()
            bench.wait()
            inst = h.wait_instance("kv", lambda i: i["state"] == "running" and i["pid"] != pid,
                                   what="running with a new pid")
            self.assertEqual(inst["restarts"], kill, f"restart count after kill {kill}")
            pid = inst["pid"]
            rep = self.check(lg, load, full=(kill % FULL_CHECK_EVERY == 0 or kill == KILLS),
                             load_full=(kill % LOAD_FULL_EVERY == 0 or kill == KILLS))
            load_checked += rep.acked
            print(f"kill {kill}: back in {restart_s[-1] * 1000:.1f} ms, {len(lg.acked)} keys"
                  f" acknowledged, counter acked {lg.last_incr}; pipelined: {rep.acked} acked"
                  f" SETs checked, unknown {rep.unknown_present} present/{rep.unknown_absent}"
                  f" absent", flush=True)

        inst = h.instance("kv")
        self.assertEqual(inst["restarts"], KILLS)
        self.assertEqual(inst["state"], "running")
        self.assertGreater(lg.incr_acks, 0, "no INCR was ever acknowledged")
        self.assertGreater(len(lg.acked), len(base), "no SET acknowledged during the kills")
        totals = load.totals()
        self.assertGreater(totals["acked"], 0, "no pipelined SET was ever acknowledged")
        self.assertGreater(totals["breaks"], 0, "no kill ever broke a pipelined batch")
        rc, out = redis(self.port, "INFO", "spare")
        info = dict(ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
        self.assertEqual(info["writes"].strip(), KV_WRITES)
        if os.environ.get("SPARE_VERIFY_WRITES") == "1" and KV_WRITES == "declared":
            self.assertGreater(int(info["pages_verified"]), 0, "verification never ran")
        elif KV_WRITES == "declared":  # the production path: no tracker on the region
            self.assertEqual(int(info["pages_verified"]), 0, "verification ran unasked")
        # Each instance had an exit helper (runtime/exit_helper.h) sharing its
        # address space; the ones killed with their instances were reparented
        # to the agent, their subreaper, which reaped them: none is left, not
        # even as a zombie.
        helper = int(info["exit_helper_pid"])
        self.assertGreater(helper, 0, "the instance has no exit helper")
        self.assertEqual(proc_stat(helper)[::2], ("spare-exit", pid),
                         "exit_helper_pid is not the instance's spare-exit child")
        deadline = time.monotonic() + 15
        while True:
            left = [c for c in children(h.agent_proc.pid) if c[0] != pid]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(left, [], "children of the agent left behind by killed instances")
        ms = sorted(s * 1000 for s in restart_s)
        print(f"{KILLS} kills: kill -> PONG p50 {statistics.median(ms):.1f} ms,"
              f" max {ms[-1]:.1f} ms; {len(lg.acked)} acknowledged keys verified,"
              f" {lg.incr_acks} acknowledged INCRs, 0 lost")
        print(f"pipelined: {load.summary()}; {load_checked} acknowledged SET checks"
              f" ({totals['acked']} distinct SETs) in {self.load_check_s:.1f} s, 0 violations")


if __name__ == "__main__":
    unittest.main()
