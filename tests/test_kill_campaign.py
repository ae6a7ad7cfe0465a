"""Kill campaign for hot protection: 30 kills at random moments, one checker.

One spare host (`spare standby --agent` and its agent) and a primary agent
with `--standby`, on this host over UCX_TLS=tcp, with hot spare-kv
instances under the pipelined acknowledged-write load (tests/resp_load.py:
3 connections, batches of 16). The kills, in an order and with delays drawn
from the seed (SPARE_CAMPAIGN_SEED, else the time; printed first, so a
failing run replays):

- instance: kill -9 of the instance alone; the agent restarts it locally
  from its image and it is protected again without a full copy;
- agent: kill -9 of the primary's agent with its instance under load; the
  standby fails it over and the spare host's agent launches it;
- copy-instance / copy-agent: the standby is restarted, so the instance
  gets a full copy; while `spare status` says the copy is in progress the
  instance (resp. the agent) is killed. The instance restarts locally and
  is copied again; the agent is not failed over (its replica is
  incomplete: there is nothing to fail over to), the next agent adopts the
  instance and it is protected again;
- before-commit: the agent dies between the puts of an epoch and its
  COMMIT (SPARE_FAULT=agent-before-commit:N, common/fault.h): the standby
  fails over from the last acknowledged epoch, the staged one is dropped;
- mid-apply: the standby dies with an epoch half written into a replica
  (SPARE_FAULT=standby-mid-apply:N); a new standby gets a full copy, then a
  failover from that replica has everything.

After every kill: every acknowledged SET is on whichever server now holds
the instance with exactly its value, nothing is there that was never sent,
and DBSIZE matches (PipelinedLoad.check). The count of kills by kind, and of
full copies a kill actually hit, is printed at the end. Release build only
(label `campaign`): under ASan it would take most of the suite's budget,
and sys_failover runs the same paths there.
"""

import collections
import contextlib
import os
import random
import signal
import sys
import time
import unittest

from spare_harness import Harness, tail
from test_failover import Setup

KINDS = (["instance"] * 12 + ["agent"] * 6 + ["copy-instance"] * 2 + ["copy-agent"] * 2
         + ["before-commit"] * 4 + ["mid-apply"] * 4)


@contextlib.contextmanager
def fault(spec):
    """SPARE_FAULT=spec for the processes started inside."""
    old = os.environ.get("SPARE_FAULT")
    if spec:
        os.environ["SPARE_FAULT"] = spec
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPARE_FAULT", None)
        else:
            os.environ["SPARE_FAULT"] = old


def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class KillCampaign(unittest.TestCase):
    def setUp(self):
        self.seed = int(os.environ.get("SPARE_CAMPAIGN_SEED", time.time()))
        print(f"kill campaign seed {self.seed} (SPARE_CAMPAIGN_SEED={self.seed} replays it)",
              flush=True)
        self.rng = random.Random(self.seed)
        # The default timeout (30 ms), beside other suites on 2 cores: an
        # agent busy restarting an instance must not be taken for a dead one
        # (its liveness thread beats on: hot/live.h). Before heartbeats had
        # threads of their own this needed 250 ms.
        self.s = Setup(self, "tcp", False, seed=self.seed)
        self.n = 0
        self.kills = collections.Counter()
        self.copies_hit = 0
        self.checked = 0
        self.primary_fault = None
        self.start_instance()

    # --- the instance under test -----------------------------------------

    def start_instance(self):
        """A new id on the current primary, protected, under load."""
        self.n += 1
        self.id = f"kv{self.n}"
        # More kills than the default 5 restarts a minute can hit one id.
        self.s.run_kv(self.id, extra=["--max-restarts", "100"])
        self.port = self.s.ports[self.id]
        # 400-byte values: a few seconds of load make an image whose full
        # copy takes long enough to be caught in progress.
        self.load = self.s.load(self.id, value_len=400)
        self.load.start()
        time.sleep(self.rng.uniform(0.2, 0.5))

    def fresh_primary(self, fault_spec=None):
        """The previous instance ended (failed over): a new primary agent and
        instance for the next kills."""
        self.load.stop()
        self.s.spare.stop(self.id)  # the replacement has been checked
        with fault(fault_spec):
            self.s.primary = Harness(self, name=f"kc-pri{self.n}")
            self.s.primary.start_agent(extra=["--standby", self.s.standby_at])
        self.start_instance()

    def check(self, where):
        self.load.pause()
        rep = self.load.check(full=False)
        self.assertTrue(rep.ok, f"after kill {sum(self.kills.values())} ({where}), seed "
                        f"{self.seed}: {rep.summary()}")
        self.assertEqual(rep.violations, [], rep.summary())
        self.checked = rep.present
        self.load.resume()

    def pid(self):
        return self.s.primary.instance(self.id)["pid"]

    def protected_again(self, what, old_pid=None, timeout=30):
        inst = self.s.primary.wait_instance(
            self.id, lambda i: i["state"] == "running" and i["standby"] == "protected"
            and i["pid"] not in (0, old_pid), timeout=timeout, what=what)
        # Attached before it listens: the clients reconnect meanwhile.
        self.s.primary.wait_pong(self.port)
        return inst

    def replaced(self, since):
        self.s.wait_replacement(self.id, since)
        self.check("replacement")

    # --- kinds ------------------------------------------------------------

    def kill_instance(self):
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        self.protected_again("restarted locally and protected", old_pid=pid)
        self.check("local restart")

    def kill_agent(self):
        self.load.resume()
        time.sleep(self.rng.uniform(0.05, 0.4))
        pid = self.pid()
        self.s.primary.kill_agent()
        os.kill(pid, signal.SIGKILL)
        self.replaced(time.monotonic())
        self.fresh_primary()

    def during_copy(self, victim):
        copies = self.s.primary.instance(self.id)["full_copies"]
        self.s.standby.kill()
        self.s.standby.wait(timeout=10)
        self.s.start_standby()
        # Catch the copy in progress (a 64 MiB region holding a few MiB copies
        # in tens of ms; this polls `spare status` as fast as it answers).
        end = time.monotonic() + 20
        hit = False
        while time.monotonic() < end:
            inst = self.s.primary.instance(self.id)
            if inst["standby"].startswith("full copy"):
                hit = True
                break
            if inst["full_copies"] > copies:
                break
            time.sleep(0.001)
        pid = self.pid()
        if victim == "instance":
            self.copies_hit += hit  # (as `spare status` last saw it)
            os.kill(pid, signal.SIGKILL)
            self.protected_again("restarted during a full copy, protected again", old_pid=pid)
        else:
            self.s.primary.kill_agent()
            killed = time.monotonic()
            # Still copying when the agent died: no failover (nothing whole to
            # fail over to), the next agent adopts the instance. Copied just
            # before: a failover, with everything.
            fenced = f"instance {self.id} fenced"
            while time.monotonic() - killed < 0.8 and fenced not in tail(self.s.standby_log, 30):
                time.sleep(0.005)
            if fenced in tail(self.s.standby_log, 30):
                os.kill(pid, signal.SIGKILL)  # the orphan holds its port (one host here)
                self.replaced(killed)
                self.fresh_primary()
                return
            self.copies_hit += 1  # it was: no failover
            self.s.primary.start_agent(extra=["--standby", self.s.standby_at])
            inst = self.protected_again("adopted after an agent kill during a full copy")
            self.assertEqual(inst["pid"], pid, "the instance did not survive its agent's death")
        self.check(f"kill of the {victim} during a full copy (caught in progress: {hit})")

    def kill_before_commit(self):
        nth = self.rng.randint(50, 1500)
        # The instance stops, the agent leaves gracefully, and a primary
        # armed to die at its nth COMMIT takes over with a new instance.
        self.load.stop()
        self.s.primary.stop(self.id)
        self.s.primary.agent_proc.send_signal(signal.SIGTERM)
        self.s.primary.agent_proc.wait(timeout=10)
        with fault(f"agent-before-commit:{nth}"):
            self.s.primary = Harness(self, name=f"kc-pri{self.n}")
            self.s.primary.start_agent(extra=["--standby", self.s.standby_at])
        self.n += 1
        self.id = f"kv{self.n}"
        # More kills than the default 5 restarts a minute can hit one id.
        self.s.run_kv(self.id, extra=["--max-restarts", "100"])
        self.port = self.s.ports[self.id]
        pid = self.pid()
        self.load = self.s.load(self.id, value_len=400)
        self.load.start()
        # Its orphan must go before the replacement binds the same port
        # (one host here): kill it as soon as the agent is gone.
        agent = self.s.primary.agent_proc
        wait(lambda: agent.poll() is not None, 60, "the armed agent's death")
        died = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the orphan: it holds its replies anyway
        self.assertIn("SPARE_FAULT reached", tail(os.path.join(self.s.primary.dir, "agent.log")))
        self.replaced(died)
        self.fresh_primary()

    def kill_mid_apply(self):
        nth = self.rng.randint(20, 800)
        self.s.standby.kill()
        self.s.standby.wait(timeout=10)
        with fault(f"standby-mid-apply:{nth}"):
            self.s.start_standby()
        self.load.resume()
        self.s.standby.wait(timeout=60)
        self.assertIn("SPARE_FAULT reached", tail(self.s.standby_log, 20))
        self.s.start_standby()
        self.protected_again("protected by a new standby after one died mid-apply", timeout=30)
        self.check("resync after the standby died mid-apply")
        # The replica after the resync is whole: a failover has everything.
        self.kill_agent()

    def test_thirty_kills(self):
        kinds = list(KINDS)
        self.rng.shuffle(kinds)
        t0 = time.monotonic()
        for i, kind in enumerate(kinds):
            print(f"kill {i + 1}/{len(kinds)}: {kind} (instance {self.id})", flush=True)
            self.kills[kind] += 1
            step = {"instance": self.kill_instance,
                    "agent": self.kill_agent,
                    "copy-instance": lambda: self.during_copy("instance"),
                    "copy-agent": lambda: self.during_copy("agent"),
                    "before-commit": self.kill_before_commit,
                    "mid-apply": self.kill_mid_apply}[kind]
            try:
                step()
            except AssertionError as e:
                raise AssertionError(f"kill {i + 1} ({kind}), seed {self.seed}: {e}\n"
                                     f"standby log:\n{tail(self.s.standby_log, 60)}") from None
        self.load.pause()
        rep = self.load.check(full=True)
        self.assertTrue(rep.ok, rep.summary())
        self.assertGreaterEqual(sum(self.kills.values()), 30)
        print(f"kill campaign seed {self.seed}: {sum(self.kills.values())} kills "
              f"({dict(self.kills)}), full copies caught in progress {self.copies_hit}/4, "
              f"{len(kinds)} checks, 0 acknowledged SETs lost, in "
              f"{time.monotonic() - t0:.0f} s; last check {rep.summary()}", flush=True)


if __name__ == "__main__":
    unittest.main()
