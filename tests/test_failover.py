"""Hot failover with real processes, on two simulated hosts.

The primary host and the spare host are network namespaces joined by a
veth pair (tests/netns.py); UCX runs over TCP between them
(UCX_TLS=tcp, UCX_NET_DEVICES=spare0), and the test's clients reach each
host over a link of its own. On the spare host run `spare standby --agent`
and its agent; on the primary an agent with `--standby` and spare-kv
instances under `--policy hot`, each under a pipelined SET load (several
connections, batches of 16).

What it checks (issue 8):
- kill -9 of the primary's agent together with its instances: the agent's
  liveness connection closes, so the standby suspects it at once (well
  inside a 100 ms timeout), fences it and hands each replica to the spare
  host's agent, which launches the instance at the same addresses; every
  SET acknowledged before the kill reads back from the replacement at the
  spare host's address, nothing is there that was never sent, and the
  replacement's status names its failover (from whom, generation, the
  split into detection, fencing, launch and first attach);
- the same kill on one machine over shared memory (UCX_TLS=shm,tcp);
- a fenced old primary that comes back: its agent stopped (SIGSTOP) past
  the timeout (detected by silence: a stopped process closes nothing), the
  instance fails over, then SIGCONT: the old agent is told
  it is fenced, kills its instance without restarting it, and no reply it
  held is ever released (a SET sent to it meanwhile is never acknowledged
  and is not in the replacement);
- standby restart: kill -9 of the standby under load holds every reply;
  a new standby on the same address gets a full copy (only the pages ever
  written: far less than the region) and the held replies are released;
  then a failover from that replica has every acknowledged SET, those from
  before the standby's restart included;
- a hot instance killed alone restarts locally (the agent lives) and stays
  protected without a full copy; a later failover still has everything;
- planned failover (`spare failover`) under load: the instance moves to the
  spare host with every acknowledged SET; the old host lists it stopped
  ("moved"); a local-policy instance is refused, unchanged;
- agent restart: a gracefully stopped agent (SIGTERM; its instances run on)
  tells the standby, which does not fail them over; the next agent takes
  them back, protected again, and a later failover has everything.
"""

import json
import os
import random
import signal
import subprocess
import time
import unittest

from netns import Hosts
from resp_load import PipelinedLoad
from spare_harness import REDIS_CLI, SPARE, SPARE_KV, Harness, free_port, redis, tail

STANDBY_PORT = 7700


class Setup:
    """A spare host (agent + standby) and a primary host (agent), in two
    namespaces (two_hosts) or both on this host's loopback."""

    def __init__(self, test, tls, two_hosts, seed, agent_extra=(), standby_extra=()):
        self.test = test
        self.rng = random.Random(seed)
        env = {"UCX_TLS": tls}
        # Pinned to the one link between the hosts, or to loopback: UCX
        # must not wire lanes over interfaces another test (its namespaces'
        # veth ends in this namespace) adds and removes meanwhile — a
        # connect to a vanished address tripped an assertion inside UCX 1.13
        # (uct_tcp_ep_pending_purge) in a campaign agent.
        env["UCX_NET_DEVICES"] = "spare0" if two_hosts else "lo"
        for k, v in env.items():
            old = os.environ.get(k)
            os.environ[k] = v
            test.addCleanup(lambda k=k, old=old: os.environ.__setitem__(k, old)
                            if old is not None else os.environ.pop(k, None))
        self.hosts = Hosts(test, ["pri", "spr"]) if two_hosts else None
        w = self.wrap
        self.spare = Harness(test, name="fo-spare")
        self.spare.start_agent(wrap=w("spr"))
        standby_ip = self.hosts.peer_ip("spr") if two_hosts else "127.0.0.1"
        standby_port = STANDBY_PORT if two_hosts else free_port()
        self.standby_log = os.path.join(self.spare.dir, "standby.log")
        self.standby_at = f"{standby_ip}:{standby_port}"
        self.standby_starts = 0
        self.standby_extra = list(standby_extra)
        self.start_standby()
        self.primary = Harness(test, name="fo-pri")
        self.primary.start_agent(extra=["--standby", f"{standby_ip}:{standby_port}",
                                        *agent_extra], wrap=w("pri"))
        self.ports = {}

    def start_standby(self):
        """(Re)starts the standby on its address."""
        self.standby = self.spare.popen(
            [*self.wrap("spr"), SPARE, "standby", "--listen", self.standby_at, "--name",
             "spare-host", "--agent", self.spare.dir, "--dir",
             os.path.join(self.spare.dir, "standby-state"), *self.standby_extra],
            log=self.standby_log)
        deadline = time.monotonic() + 10
        while tail(self.standby_log, 400).count("listening on") < self.standby_starts + 1:
            self.test.assertIsNone(self.standby.poll(), "standby exited:\n" + tail(self.standby_log))
            self.test.assertLess(time.monotonic(), deadline, "standby never listened")
            time.sleep(0.02)
        self.standby_starts += 1

    def wrap(self, host):
        return self.hosts.wrap(host) if self.hosts else []

    def ip(self, host):
        return self.hosts.client_ip(host) if self.hosts else "127.0.0.1"

    def run_kv(self, instance_id, extra=()):
        port = 7001 + len(self.ports) if self.hosts else free_port()
        self.ports[instance_id] = port
        bind = "0.0.0.0" if self.hosts else "127.0.0.1"
        self.primary.run(instance_id, [SPARE_KV, "--port", str(port), "--bind", bind,
                                       "--region-size", "64M"], policy="hot", extra=extra)
        self.primary.wait_pong(port, host=self.ip("pri"))
        self.primary.wait_instance(instance_id, lambda i: i["standby"] == "protected",
                                   what="protected by the standby")
        return port

    def load(self, instance_id, value_len=48):
        load = PipelinedLoad(self.ports[instance_id], host=self.ip("pri"), conns=3, batch=16,
                             prefix=instance_id, seed=self.rng.random(), value_len=value_len)
        self.test.addCleanup(load.stop)
        return load

    def loaded(self, instance_id, seconds):
        """spare-kv `instance_id` (hot) under a pipelined load for `seconds`,
        then paused; returns the load."""
        self.run_kv(instance_id)
        load = self.load(instance_id)
        load.start()
        time.sleep(seconds)
        load.pause()
        return load

    def fail_over_and_check(self, load, pid, instance_id="kv1"):
        """Under the load: kill -9 of the primary agent and instance `pid`;
        waits for the replacement and checks every acknowledged SET on it.
        Returns (seconds to the replacement's first PONG, the check report)."""
        load.resume()
        time.sleep(0.3)
        self.primary.kill_agent()
        os.kill(pid, signal.SIGKILL)
        took = self.wait_replacement(instance_id, time.monotonic())
        load.pause()
        rep = load.check(full=True)
        self.test.assertTrue(rep.ok, rep.summary())
        self.test.assertEqual(rep.violations, [], rep.summary())
        return took, rep

    def wait_replacement(self, instance_id, since, timeout=20):
        """Seconds from `since` to the first PONG from the replacement on the
        spare host."""
        port = self.ports[instance_id]
        end = time.monotonic() + timeout
        while True:
            rc, out = redis(port, "PING", timeout=2, host=self.ip("spr"))
            if rc == 0 and out == "PONG":
                return time.monotonic() - since
            if time.monotonic() > end:
                raise AssertionError(
                    f"{instance_id}: no replacement answered on the spare host within {timeout} s"
                    f"\nstandby log:\n{tail(self.standby_log)}\nspare agent log:\n"
                    f"{tail(os.path.join(self.spare.dir, 'agent.log'))}")
            time.sleep(0.002)


class FailoverTest(unittest.TestCase):
    def kill_primary(self, tls, two_hosts):
        # A 100 ms timeout, above the default 30: the close of the agent's
        # liveness connection must be what detects the kill, with room for
        # a slow exit under ASan on 2 cores.
        s = Setup(self, tls, two_hosts, seed=int(time.time()),
                  standby_extra=["--timeout-ms", "100"])
        ids = ["kv1", "kv2"]
        for i in ids:
            s.run_kv(i)
        before = {i: s.primary.instance(i) for i in ids}
        loads = {i: s.load(i) for i in ids}
        for load in loads.values():
            load.start()
        time.sleep(s.rng.uniform(0.8, 1.6))
        # kill -9 of the primary host's agent and its instances, under load.
        s.primary.kill_agent()
        killed_at = time.monotonic()
        for i in ids:
            try:
                os.kill(before[i]["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        took = {}
        for i in ids:
            took[i] = s.wait_replacement(i, killed_at)
            loads[i].retarget(s.ip("spr"))
        time.sleep(0.5)  # the load goes on against the replacements
        for i in ids:
            loads[i].pause()
            totals = loads[i].totals()
            self.assertGreater(totals["acked"], 200, f"{i}: too few acknowledged SETs")
            rep = loads[i].check(full=True)
            self.assertTrue(rep.ok, f"{i}: {rep.summary()}")
            self.assertEqual(rep.violations, [], rep.summary())
            inst = s.spare.instance(i)
            self.assertEqual(inst["state"], "running", inst)
            f = inst["failover"]
            self.assertIsNotNone(f, inst)
            self.assertEqual(f["from"], "agent:" + s.primary.dir, f)
            self.assertEqual(f["standby"], "spare-host", f)
            self.assertGreater(inst["generation"], before[i]["generation"], inst)
            self.assertGreaterEqual(f["epoch"], before[i]["durable_epoch"], f)
            # kill -9 closes the agent's liveness connection (hot/live.h):
            # the standby learns of it at once, not after the 100 ms timeout.
            self.assertEqual(f["detected_by"], "close", f)
            self.assertLess(f["detection_ms"], 100, f)
            self.assertIsNotNone(f["attach_ms"], f)
            self.assertEqual([r["address"] for r in inst["regions"]],
                             [r["address"] for r in before[i]["regions"]],
                             "the replacement's regions are at the same addresses")
            # `spare where` on the spare host: here, at the address the
            # client just reached it on.
            w = s.spare.spare("where", i, "--agent", s.spare.dir, "--json")
            self.assertEqual(w.returncode, 0, w.stdout + w.stderr)
            where = json.loads(w.stdout)
            self.assertEqual(where["where"], "here", where)
            self.assertEqual(where["pid"], inst["pid"], where)
            if two_hosts:  # (on one host: its addresses, loopback aside)
                self.assertIn(s.ip("spr"), where["addresses"], where)
            print(f"{i} UCX_TLS={tls} two_hosts={two_hosts}: kill -> first PONG "
                  f"{took[i] * 1000:.0f} ms (detection {f['detection_ms']:.0f}, fencing "
                  f"{f['fencing_ms']:.2f}, launch {f['launch_ms']:.1f}, attach "
                  f"{f['attach_ms']:.1f} ms); {rep.summary()}", flush=True)
            loads[i].stop()
        log = tail(s.standby_log, 200)
        self.assertIn("fenced", log)
        self.assertEqual(log.count("failed over to the spare host"), len(ids), log)

    def test_kill_primary_two_hosts_tcp(self):
        self.kill_primary("tcp", two_hosts=True)

    def test_kill_primary_shared_memory(self):
        self.kill_primary("shm,tcp", two_hosts=False)

    def test_fenced_primary_comes_back(self):
        s = Setup(self, "tcp", True, seed=int(time.time()))
        port = s.run_kv("kv1")
        before = s.primary.instance("kv1")
        load = s.load("kv1")
        load.start()
        time.sleep(0.8)
        load.pause()
        s.primary.agent_proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            held = subprocess.Popen([REDIS_CLI, "-h", s.ip("pri"), "-p", str(port), "SET",
                                     "held", "never-acknowledged"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            s.wait_replacement("kv1", stopped_at)
            time.sleep(0.2)
            self.assertIsNone(held.poll(), "the fenced primary released a reply")
        finally:
            s.primary.agent_proc.send_signal(signal.SIGCONT)
        # The old agent hears it was fenced and stops its instance for good.
        old = s.primary.wait_instance("kv1", lambda i: i["fenced"] and i["pid"] == 0,
                                      timeout=10, what="fenced and stopped")
        self.assertEqual(old["state"], "failed", old)
        self.assertIn("fenced by standby spare-host", old["reason"])
        # `spare where` on the old host points at the spare host.
        w = s.primary.spare("where", "kv1", "--agent", s.primary.dir)
        self.assertEqual(w.returncode, 0, w.stdout + w.stderr)
        self.assertIn("failed over to the spare host at " + s.hosts.peer_ip("spr"), w.stdout)
        w = s.primary.spare("where", "nope", "--agent", s.primary.dir)
        self.assertEqual(w.returncode, 1, w.stdout + w.stderr)
        self.assertIn("no instance 'nope'", w.stderr)
        out, _ = held.communicate(timeout=10)
        self.assertNotIn("OK", out, "a SET held by the fenced primary was acknowledged")
        self.assertEqual(redis(port, "GET", "held", host=s.ip("spr")), (0, ""))
        # Everything acknowledged before is on the replacement.
        load.retarget(s.ip("spr"))
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        self.assertEqual(rep.violations, [], rep.summary())
        inst = s.spare.instance("kv1")
        self.assertGreater(inst["generation"], before["generation"])
        # A stopped agent closes nothing: the standby waited out its silence
        # (the default timeout, 30 ms).
        self.assertEqual(inst["failover"]["detected_by"], "silence", inst["failover"])
        self.assertGreaterEqual(inst["failover"]["detection_ms"], 30, inst["failover"])
        # It stays stopped on the old host: no restart a second later.
        time.sleep(0.5)
        self.assertEqual(s.primary.instance("kv1")["pid"], 0)
        self.assertIn("fenced", tail(os.path.join(s.primary.dir, "agent.log"), 100))
        print(f"fenced primary: {rep.summary()}; replacement "
              f"{json.dumps(inst['failover'])}", flush=True)


    def test_old_owner_serves_no_stale_read(self):
        # Found while writing the chaos driver's stale-read check: kill -9 of the primary's
        # agent alone leaves its instance running and reachable by clients.
        # The standby fails it over at once (the liveness connection
        # closed); once the replacement has acknowledged a newer write, a
        # read through the old instance must not answer with the older
        # value (it answered at once: read-only batches were released
        # without an epoch, on the strength of a durability nobody
        # confirmed any more).
        s = Setup(self, "tcp", True, seed=int(time.time()))
        port = s.run_kv("kv1")
        self.assertEqual(redis(port, "SET", "k", "old", host=s.ip("pri")), (0, "OK"))
        old_pid = s.primary.instance("kv1")["pid"]
        s.primary.kill_agent()
        s.wait_replacement("kv1", time.monotonic())
        self.assertEqual(redis(port, "SET", "k", "new", host=s.ip("spr")), (0, "OK"))
        self.assertTrue(os.path.exists(f"/proc/{old_pid}"), "the old instance should still run")
        rc, out = redis(port, "GET", "k", timeout=1.5, host=s.ip("pri"))
        self.assertNotEqual(out, "old",
                            "the old owner answered a read with a value older than an "
                            "acknowledged write on its replacement")
        self.assertEqual(redis(port, "GET", "k", host=s.ip("spr")), (0, "new"))
        print(f"old owner after its agent's death: GET -> rc {rc} {out!r}", flush=True)

    def test_agent_survives_its_link_going_down(self):
        # Found by the chaos driver (seed 1796357751, cut-link with ip link
        # down): with the primary's link to the spare host down for longer
        # than the reconnect delay (1 s), the agent's reconnect found no
        # usable UCX device, kept a link without a worker, and crashed on
        # its next progress (SIGSEGV in net::Worker::Progress). It must
        # keep its old link, try again, and hear that it was fenced.
        s = Setup(self, "tcp", True, seed=int(time.time()))
        s.run_kv("kv1")
        dev = s.hosts.host_link("pri")
        subprocess.run([*s.wrap("pri"), "ip", "link", "set", dev, "down"], check=True)
        try:
            s.wait_replacement("kv1", time.monotonic())  # the standby hears nothing: failover
            time.sleep(1.8)  # past the agent's reconnect delay, the device still down
        finally:
            subprocess.run([*s.wrap("pri"), "ip", "link", "set", dev, "up"], check=True)
        old = s.primary.wait_instance("kv1", lambda i: i["fenced"] and i["pid"] == 0,
                                      timeout=15, what="told it was fenced once the link is back")
        self.assertIsNone(s.primary.agent_proc.poll(),
                          "the agent died:\n" + tail(os.path.join(s.primary.dir, "agent.log")))
        self.assertEqual(old["state"], "failed", old)
        self.assertIn("reconnecting failed", tail(os.path.join(s.primary.dir, "agent.log"), 400))

    def test_standby_restart_resyncs_then_fails_over(self):
        s = Setup(self, "tcp", False, seed=int(time.time()))
        load = s.loaded("kv1", 0.8)
        before = load.totals()["acked"]
        self.assertGreater(before, 200)
        # The standby dies; SETs from now on are held until a standby has
        # the whole image.
        s.standby.kill()
        s.standby.wait(timeout=10)
        load.resume()
        time.sleep(0.5)
        self.assertEqual(s.primary.instance("kv1")["standby"], "standby unreachable (outputs held)")
        held = load.totals()["acked"]
        self.assertLessEqual(held - before, 16 * 3, "replies were released without a standby")
        s.start_standby()
        inst = s.primary.wait_instance("kv1", lambda i: i["full_copies"] >= 1
                                       and i["standby"] == "protected", timeout=20,
                                       what="full copy done, protected again")
        # Only what was ever written ships: far less than the 64 MiB region.
        self.assertGreater(inst["full_copy_bytes"], 0)
        self.assertLess(inst["full_copy_bytes"], 48 << 20, inst)
        time.sleep(0.5)
        load.pause()
        after = load.totals()["acked"]
        self.assertGreater(after, held + 100, "replies stayed held after the resync")
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        self.assertIn("full copy done", tail(s.standby_log, 100))
        # Failover from the resynced replica: everything acknowledged is there.
        took, rep = s.fail_over_and_check(load, s.primary.instance("kv1")["pid"])
        print(f"standby restart: full copy of {inst['full_copy_bytes'] / 2**20:.1f} MiB; "
              f"failover after it in {took * 1000:.0f} ms; {rep.summary()}", flush=True)

    def test_continue_on_standby_loss(self):
        s = Setup(self, "tcp", False, seed=int(time.time()),
                  agent_extra=["--on-standby-loss", "continue"])
        load = s.loaded("kv1", 0.8)
        before = load.totals()["acked"]
        self.assertGreater(before, 200)
        # The standby dies: the instance goes on, unprotected, and says so.
        s.standby.kill()
        s.standby.wait(timeout=10)
        load.resume()
        inst = s.primary.wait_instance("kv1", lambda i: i["unprotected"], timeout=10,
                                       what="unprotected after the standby's loss")
        self.assertEqual(inst["standby"], "UNPROTECTED (standby lost; continuing)")
        time.sleep(0.5)
        during = load.totals()["acked"]
        self.assertGreater(during, before + 100, "replies were held under --on-standby-loss=continue")
        inst = s.primary.instance("kv1")
        self.assertGreater(inst["unprotected_s"], 0.3, inst)
        self.assertEqual(inst["unprotected_periods"], 1, inst)
        self.assertEqual(s.primary.status()["agent"]["standby"]["on_standby_loss"], "continue")
        self.assertIn("UNPROTECTED", tail(os.path.join(s.primary.dir, "agent.log"), 2000))
        # A standby again: a full copy, then protected, with what ran unprotected.
        s.start_standby()
        inst = s.primary.wait_instance("kv1", lambda i: i["full_copies"] >= 1
                                       and i["standby"] == "protected", timeout=20,
                                       what="full copy done, protected again")
        self.assertFalse(inst["unprotected"], inst)
        self.assertEqual(inst["unprotected_s"], 0, inst)
        time.sleep(0.3)
        load.pause()
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        # Failover from the resynced replica: the SETs acknowledged while
        # unprotected are there too.
        took, rep = s.fail_over_and_check(load, inst["pid"])
        print(f"continue on standby loss: {during - before} SETs acknowledged unprotected; "
              f"failover after the resync in {took * 1000:.0f} ms; {rep.summary()}", flush=True)

    def test_local_restart_of_a_hot_instance(self):
        s = Setup(self, "tcp", False, seed=int(time.time()))
        port = s.run_kv("kv1")
        load = s.load("kv1")
        load.start()
        for kill in range(3):
            time.sleep(s.rng.uniform(0.2, 0.5))
            pid = s.primary.instance("kv1")["pid"]
            os.kill(pid, signal.SIGKILL)
            s.primary.wait_pong(port)
            s.primary.wait_instance("kv1", lambda i: i["pid"] not in (0, pid)
                                    and i["standby"] == "protected", timeout=20,
                                    what="restarted locally and protected")
        time.sleep(0.3)
        load.pause()
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        inst = s.primary.instance("kv1")
        self.assertEqual(inst["restarts"], 3, inst)
        self.assertEqual(inst["full_copies"], 0, "a local restart made the replica fall behind")
        self.assertNotIn("fenced", tail(s.standby_log, 200))
        _, rep = s.fail_over_and_check(load, inst["pid"])
        print(f"local restarts then failover: {rep.summary()}", flush=True)

    def test_planned_failover(self):
        s = Setup(self, "tcp", False, seed=int(time.time()))
        port = s.run_kv("kv1")
        local_port = free_port()
        s.primary.run("kvl", [SPARE_KV, "--port", str(local_port), "--region-size", "16M"])
        p = s.primary.spare("failover", "--agent", s.primary.dir, "--id", "kvl")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("only policy hot", p.stderr)
        self.assertEqual(s.primary.instance("kvl")["state"], "running")
        load = s.load("kv1")
        load.start()
        time.sleep(0.8)
        started = time.monotonic()
        p = s.primary.spare("failover", "--agent", s.primary.dir, "--id", "kv1", "--reason",
                            "maintenance")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("moved kv1", p.stdout)
        took = s.wait_replacement("kv1", started)
        time.sleep(0.3)
        load.pause()
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        self.assertEqual(rep.violations, [], rep.summary())
        old = s.primary.instance("kv1")
        self.assertEqual((old["state"], old["pid"], old["fenced"]), ("stopped", 0, True), old)
        self.assertIn("moved to the spare host (planned failover: maintenance)", old["reason"])
        new = s.spare.instance("kv1")
        self.assertEqual(new["state"], "running")
        self.assertLess(new["failover"]["detection_ms"], 5, new["failover"])
        self.assertEqual(new["failover"]["detected_by"], "request", new["failover"])
        print(f"planned failover: command to first PONG {took * 1000:.0f} ms "
              f"({p.stdout.strip()}); {rep.summary()}", flush=True)

    def test_agent_restart_keeps_protection(self):
        s = Setup(self, "tcp", False, seed=int(time.time()))
        load = s.loaded("kv1", 0.5)
        pid = s.primary.instance("kv1")["pid"]
        s.primary.agent_proc.send_signal(signal.SIGTERM)
        s.primary.agent_proc.wait(timeout=10)
        self.assertIn("is restarting", tail(s.standby_log, 50))
        time.sleep(0.3)  # longer than the 30 ms timeout: the grace holds
        s.primary.start_agent(extra=["--standby", s.standby_at])
        inst = s.primary.wait_instance("kv1", lambda i: i["state"] == "running"
                                       and i["standby"] == "protected", timeout=20,
                                       what="adopted and protected again")
        self.assertEqual(inst["pid"], pid, "the instance kept running through the agent restart")
        load.resume()
        time.sleep(0.5)
        load.pause()
        rep = load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        log = tail(s.standby_log, 200)
        self.assertNotIn("fenced", log, "an agent restart caused a failover")
        # And it still fails over with everything.
        _, rep = s.fail_over_and_check(load, pid)
        print(f"agent restart: {rep.summary()}", flush=True)


if __name__ == "__main__":
    unittest.main()
