"""Policy hot with real processes: `spare standby`, `spare agent --standby`,
spare-kv under `--policy hot`, over UCX with the transport pinned
(UCX_TLS=tcp, then UCX_TLS=shm,tcp).

What it checks (issue 8, the shipping path; failover is not built yet):
- pipelined SETs over several connections are acknowledged through the
  standby, and every acknowledged one reads back;
- while the standby is stopped (SIGSTOP) no reply is released: a SET sent
  then stays unanswered (outputs wait for the standby's Ack), and once the
  standby runs again (SIGCONT) the reply comes and the value is there;
- heartbeats: the agent notices the stopped standby (status and log say
  so) and its return (on the same connection, or a new one when the pause
  wedged it); the standby never suspects the agent, which kept sending
  heartbeats whether it had epochs to ship or not, nor blames it for the
  standby's own pause.
"""

import os
import signal
import subprocess
import time
import unittest

from resp_load import PipelinedLoad
from spare_harness import REDIS_CLI, SPARE, SPARE_KV, Harness, free_port, redis, tail


class HotTest(unittest.TestCase):
    def run_hot(self, tls):
        # Standby and agent inherit the pinned transport.
        # UCX_NET_DEVICES=lo: loopback only, whatever interfaces other
        # tests' namespaces add to this one meanwhile (test_failover.Setup).
        for k, v in (("UCX_TLS", tls), ("UCX_NET_DEVICES", "lo")):
            old = os.environ.get(k)
            os.environ[k] = v
            self.addCleanup(lambda k=k, old=old: os.environ.__setitem__(k, old)
                            if old is not None else os.environ.pop(k, None))
        h = Harness(self, name=f"hot-{tls.replace(',', '-')}")
        port = free_port()
        standby_log = os.path.join(h.dir, "standby.log")
        standby = h.popen([SPARE, "standby", "--listen", f"127.0.0.1:{port}", "--name",
                           "spare-host"], log=standby_log)
        deadline = time.monotonic() + 10
        while "listening on" not in tail(standby_log):
            self.assertIsNone(standby.poll(), "standby exited:\n" + tail(standby_log))
            self.assertLess(time.monotonic(), deadline, "standby never listened")
            time.sleep(0.02)
        h.start_agent(extra=["--standby", f"127.0.0.1:{port}"])
        agent_log = os.path.join(h.dir, "agent.log")
        kv_port = free_port()
        h.run("kv", [SPARE_KV, "--port", str(kv_port)], policy="hot")
        h.wait_pong(kv_port)

        load = PipelinedLoad(kv_port, conns=4, batch=16, seed=7, value_len=64)
        self.addCleanup(load.stop)
        load.start()
        time.sleep(1.5)
        load.pause()
        totals = load.totals()
        self.assertGreater(totals["acked"], 500, f"too few acknowledged SETs: {load.summary()}")
        rep = load.check(kv_port, full=True)
        self.assertTrue(rep.ok, rep.summary())
        self.assertEqual(rep.violations, [], rep.summary())

        # The standby stops: nothing may be released.
        os.kill(standby.pid, signal.SIGSTOP)
        try:
            held = subprocess.Popen([REDIS_CLI, "-p", str(kv_port), "SET", "held", "yes"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(0.5)
            self.assertIsNone(held.poll(), "a reply was released while the standby was stopped")
            # The agent noticed the silence (timeout 30 ms) and says so.
            self.assertIn("silent for", tail(agent_log, 50))
            self.assertEqual(h.instance("kv")["standby"], "standby unreachable (outputs held)")
        finally:
            os.kill(standby.pid, signal.SIGCONT)
        out, _ = held.communicate(timeout=15)
        self.assertEqual((held.returncode, out.strip()), (0, "OK"),
                         "standby log:\n" + tail(standby_log, 60))
        self.assertEqual(redis(kv_port, "GET", "held"), (0, "yes"))

        load.resume()
        time.sleep(0.5)
        load.pause()
        rep = load.check(kv_port, full=True)
        self.assertTrue(rep.ok, rep.summary())
        load.stop()
        # Protected again. Not necessarily at this instant: on a loaded
        # machine the connection a SIGSTOP wedged may still be being
        # replaced (the agent reconnects after a second of silence).
        inst = h.wait_instance("kv", lambda i: i["standby"] == "protected", timeout=15,
                               what="protected again after the standby's pause")
        self.assertEqual(inst["policy"], "hot")
        self.assertGreater(inst["standby_epoch"], 0, inst)
        self.assertGreaterEqual(inst["standby_epoch"], inst["durable_epoch"], inst)
        self.assertEqual(inst["ship_errors"], 0, inst)
        # Stopping retires the replica: the same id runs again fresh and is
        # protected at once (not blocked behind the old replica's epoch).
        h.stop("kv")
        h.run("kv", [SPARE_KV, "--port", str(kv_port)], policy="hot")
        h.wait_pong(kv_port)
        self.assertEqual(redis(kv_port, "SET", "again", "1"), (0, "OK"))
        self.assertEqual(h.instance("kv")["standby"], "protected")
        log = tail(agent_log, 400)
        self.assertIn("retired", log)
        self.assertIn("reserved on standby spare-host", log)
        # The agent noticed the standby's return: on the same connection, or
        # (when the pause wedged it, as UCX over TCP can) on a new one.
        self.assertTrue("answers again" in log or
                        ("connecting again" in log and log.count(" answered (heartbeat") >= 2),
                        log)
        # Heartbeats kept the agent alive for the standby all along, idle or
        # not (the standby was stopped, never the agent): no suspicion.
        self.assertNotIn("suspected", tail(standby_log, 400))
        print(f"UCX_TLS={tls}: {load.summary()}; {rep.summary()}", flush=True)

    def test_hot_over_tcp(self):
        self.run_hot("tcp")

    def test_hot_over_shared_memory(self):
        self.run_hot("shm,tcp")


if __name__ == "__main__":
    unittest.main()
