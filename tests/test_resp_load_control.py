"""The pipelined load checker (resp_load.py) can fail, and passes when it should.

  - parser: RespParser on every reply type, fed whole and byte by byte, and
    on malformed replies;
  - negative control: spare-kv --unprotected (no agent, state in anonymous
    memory) under PipelinedLoad is checked clean while it lives, then kill -9
    and started again on the same port: the checker must report every
    acknowledged SET as lost; keys planted with redis-cli (a changed value of
    an acknowledged key, a never-sent sequence number, a never-used
    connection id, a foreign value on an unknown-outcome key) must each be
    reported;
  - positive control: the same load under the agent, kill -9, restart from
    the committed image: zero violations, DBSIZE equal to the loader's keys;
    then the CLI (`resp_load.py --check --json`) against it.
"""

import json
import os
import subprocess
import sys
import time
import unittest

from resp_load import PipelinedLoad, ProtocolError, RespParser
from spare_harness import SPARE_KV, Harness, free_port, redis

SEED = int(os.environ.get("SPARE_SEED", str(int(time.time()))))
HERE = os.path.dirname(os.path.abspath(__file__))


def wait_acked(load, n, timeout=20):
    """Waits until the load has n acknowledged SETs; fails after timeout s."""
    end = time.monotonic() + timeout
    while load.totals()["acked"] < n:
        if time.monotonic() > end:
            raise AssertionError(f"fewer than {n} SETs acknowledged in {timeout} s:"
                                 f" {load.summary()}")
        time.sleep(0.01)


class ParserTest(unittest.TestCase):
    REPLIES = (b"+OK\r\n-ERR bad thing\r\n:42\r\n:-7\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n"
               b"*5\r\n$0\r\n\r\n*1\r\n:1\r\n$-1\r\n$4\r\n\r\n\r\n\r\n+x\r\n*0\r\n")
    WANT = ["OK", "ERR bad thing", 42, -7, b"abc", None, None,
            [b"", [1], None, b"\r\n\r\n", "x"], []]

    def parse_all(self, chunks):
        p, out = RespParser(), []
        for c in chunks:
            p.feed(c)
            while (r := p.get()) is not RespParser.NEED_MORE:
                out.append(r)
        return out

    def test_whole_and_bytewise(self):
        whole = self.parse_all([self.REPLIES])
        self.assertEqual(whole, self.WANT)
        self.assertEqual([type(x).__name__ for x in whole[:2]], ["Simple", "Error"])
        bytewise = self.parse_all([bytes([b]) for b in self.REPLIES])
        self.assertEqual(bytewise, self.WANT)

    def test_malformed(self):
        for bad in (b"?x\r\n", b":1a\r\n", b"$3\r\nabcd\r\n", b"$-2\r\n", b"*-3\r\n",
                    b"*1\r\n$3\r\nabcd\r\n", b"*1\r\n$+1\r\na\r\n", b"*1\r\n$ 1\r\na\r\n",
                    b"*1\r\n#\r\n"):
            p = RespParser()
            p.feed(bad)
            with self.assertRaises(ProtocolError, msg=repr(bad)):
                p.get()


class ControlTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.port = free_port()
        print(f"seed {SEED}")

    def start_unprotected(self):
        p = self.h.popen([SPARE_KV, "--unprotected", "--port", str(self.port)])
        self.h.wait_pong(self.port)
        return p

    def load(self, **kw):
        load = PipelinedLoad(self.port, conns=4, batch=16, seed=SEED, **kw)
        self.addCleanup(load.stop)
        return load

    def test_unprotected_kill9_loses_acknowledged_writes(self):
        kv = self.start_unprotected()
        load = self.load()
        load.start()
        wait_acked(load, 2000)
        load.pause()
        rep = load.check()
        self.assertTrue(rep.ok, rep.summary())  # the checker passes a live server
        self.assertEqual(rep.present, load.totals()["acked"])
        print(f"live: {rep.summary()}")
        load.resume()
        wait_acked(load, load.totals()["acked"] + 1000)
        kv.kill()  # SIGKILL, mid-load
        kv.wait(timeout=10)
        # A thread that was between batches at the kill finds the dead
        # connection on its next send; let at least one do so (bounded).
        deadline = time.monotonic() + 5
        while load.totals()["breaks"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        load.pause()
        self.start_unprotected()
        totals = load.totals()
        rep = load.check()
        print(f"after kill -9: {load.summary()}\n  {rep.summary()}")
        lost = [v for v in rep.violations if v.startswith("acknowledged ") and v.endswith(" lost")]
        self.assertGreaterEqual(totals["acked"], 3000)
        self.assertGreaterEqual(totals["breaks"], 1)
        self.assertEqual(len(lost), totals["acked"], "every acknowledged SET must be reported lost")
        self.assertEqual(len(rep.violations), len(lost), rep.violations[:5])
        self.assertEqual((rep.present, rep.unknown_present), (0, 0))

        # Keys the loader never wrote (or wrote differently) must each be reported.
        unknown = [(lg.cid, min(lg.unknown)) for lg in load.ledgers if lg.unknown]
        planted = {f"p:1:{min(load.ledgers[1].acked)}": "holds b'bogus', not",
                   f"p:0:{load.ledgers[0].next_seq}": "but was never sent",
                   "p:4:0": "but was never sent"}  # conn id 4: one past the last
        if unknown:  # killed mid-batch (nearly always): a foreign value on an unknown key
            planted["p:%d:%d" % unknown[0]] = "never sent (sent"
        for key in planted:
            self.assertEqual(redis(self.port, "SET", key, "bogus"), (0, "OK"))
        rep = load.check()
        for key, what in planted.items():
            hits = [v for v in rep.violations if f"{key} " in v]
            self.assertEqual(len(hits), 1, f"{key}: {hits}")
            self.assertIn(what, hits[0])
        self.assertEqual(len(rep.violations), totals["acked"] + len(planted) - 1)
        print(f"planted {len(planted)} foreign keys: all reported")
        # A delta check reads only unknown-outcome and new keys, and says which keys
        # the server must hold, so a DBSIZE balance exposes the lost ones.
        rep = load.check(full=False)
        self.assertEqual(rep.present, totals["acked"] + bool(unknown))  # + the planted one
        self.assertEqual(redis(self.port, "DBSIZE"), (0, str(len(planted))))

    def test_agent_kill9_keeps_acknowledged_writes(self):
        h = self.h
        h.start_agent()
        pid, _ = h.run("kv", [SPARE_KV, "--port", str(self.port)])
        h.wait_pong(self.port)
        load = self.load()
        load.start()
        wait_acked(load, 2000)
        os.kill(pid, 9)
        h.wait_pong(self.port, timeout=20)
        wait_acked(load, load.totals()["acked"] + 1000)  # it reconnected
        load.pause()
        rep = load.check(full=False)
        totals = load.totals()
        print(f"{load.summary()}\n  {rep.summary()}")
        self.assertEqual(rep.violations, [])
        self.assertGreaterEqual(totals["breaks"], 1)
        self.assertEqual(h.instance("kv")["restarts"], 1)
        rep = load.check(full=True)
        self.assertEqual(rep.violations, [])
        self.assertEqual(redis(self.port, "DBSIZE"), (0, str(rep.present)))
        load.stop()

        cli = [sys.executable, os.path.join(HERE, "resp_load.py"), "--port", str(self.port),
               "--seconds", "0.5", "--prefix", "cli", "--check", "--json"]
        p = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        out = json.loads(p.stdout)
        self.assertGreater(out["load"]["acked"], 0)
        self.assertEqual(out["check"]["violations"], [])
        self.assertEqual(out["check"]["acked"], out["load"]["acked"])
        p = subprocess.run(cli[:3] + ["0"], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--port must be 1..65535", p.stderr)


if __name__ == "__main__":
    unittest.main()
