"""The spare CLI as an operator meets it: errors, status, stop, crash loops."""

import json
import os
import subprocess
import tempfile
import time
import unittest

from spare_harness import SPARE, SPARE_KV, Harness, free_port, pid_alive, redis

INSTANCE_FIELDS = {"id", "pid", "policy", "state", "epoch", "generation", "restarts",
                   "last_restart_ms", "tracker", "reason"}


class NoAgentTest(unittest.TestCase):
    def test_run_without_agent_fails_clearly(self):
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.run([SPARE, "run", "--agent", d, "--id", "kv", "--policy", "local", "--",
                                SPARE_KV, "--port", str(free_port())],
                               capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(d, p.stderr, "the error should name the agent directory it tried")
        self.assertIn("agent", p.stderr.lower())

    def test_status_without_agent_fails_clearly(self):
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.run([SPARE, "status", "--agent", d], capture_output=True, text=True,
                               timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(d, p.stderr)

    def test_kv_outside_spare_run_names_spare_agent(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARE_")}
        p = subprocess.run([SPARE_KV, "--port", str(free_port())], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("SPARE_AGENT", p.stderr)


class AgentCliTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def start_kv(self, extra=()):
        self.h.start_agent()
        port = free_port()
        pid, gen = self.h.run("kv", [SPARE_KV, "--port", str(port)], extra=extra)
        self.h.wait_pong(port)
        return port, pid, gen

    def test_status_table_and_json(self):
        port, pid, gen = self.start_kv()
        inst = self.h.instance("kv")
        self.assertLessEqual(INSTANCE_FIELDS, set(inst), "status --json misses fields")
        self.assertEqual((inst["pid"], inst["policy"], inst["state"], inst["restarts"]),
                         (pid, "local", "running", 0))
        self.assertEqual(inst["generation"], gen)
        self.assertIn(inst["tracker"], ("uffd-wp", "mprotect"))
        epoch = inst["epoch"]
        for i in range(5):
            self.assertEqual(redis(port, "SET", f"a{i}", "b"), (0, "OK"))
        self.assertGreater(self.h.instance("kv")["epoch"], epoch, "writes should commit epochs")

        table = self.h.spare("status", "--agent", self.h.dir)
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        header = next(line for line in lines if "STATE" in line.upper())
        for column in ("ID", "PID", "POLICY", "STATE", "EPOCH", "RESTARTS"):
            self.assertIn(column, header.upper())
        row = next((line for line in lines if line.split()[:1] == ["kv"]), None)
        self.assertIsNotNone(row, table.stdout)
        self.assertIn(str(pid), row.split())
        self.assertIn("running", row.split())

    def test_metrics_are_prometheus_text(self):
        self.start_kv()
        p = self.h.spare("metrics", "--agent", self.h.dir)
        self.assertEqual(p.returncode, 0, p.stderr)
        samples = [line for line in p.stdout.splitlines() if line and not line.startswith("#")]
        self.assertTrue(samples, p.stdout)
        for line in samples:
            name, value = line.rsplit(" ", 1)
            float(value)  # every sample ends in a number
            self.assertRegex(name, r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$")
        self.assertIn('id="kv"', p.stdout)

    def test_stop(self):
        port, pid, _ = self.start_kv()
        p = self.h.stop("kv")
        self.assertEqual(p.returncode, 0, p.stderr)
        inst = self.h.wait_instance("kv", lambda i: i["state"] in ("stopped", "exited"),
                                    what="stopped")
        self.assertEqual(inst["state"], "stopped")
        end = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.01)
        self.assertFalse(pid_alive(pid), "stopped instance still runs")
        self.assertNotEqual(redis(port, "PING", timeout=2), (0, "PONG"))
        time.sleep(0.5)
        self.assertEqual(self.h.instance("kv")["state"], "stopped", "a stopped instance restarted")

    def test_stop_unknown_instance(self):
        self.h.start_agent()
        p = self.h.stop("nosuch")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nosuch", p.stderr)

    def test_run_duplicate_id_refused(self):
        self.start_kv()
        p = self.h.spare("run", "--agent", self.h.dir, "--id", "kv", "--policy", "local", "--",
                         SPARE_KV, "--port", str(free_port()))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("kv", p.stderr)

    def test_crash_loop_marks_failed(self):
        port, pid, _ = self.start_kv(extra=["--max-restarts", "3", "--restart-window", "60"])
        for kill in range(1, 5):
            os.kill(pid, 9)
            if kill <= 3:
                inst = self.h.wait_instance(
                    "kv", lambda i: i["state"] == "running" and i["pid"] != pid,
                    what=f"restart {kill}")
                self.assertEqual(inst["restarts"], kill)
                pid = inst["pid"]
                self.h.wait_pong(port)
        inst = self.h.wait_instance("kv", lambda i: i["state"] == "failed", what="failed")
        self.assertIn("crash", inst["reason"].lower(), inst)
        time.sleep(0.5)
        inst = self.h.instance("kv")
        self.assertEqual(inst["state"], "failed", "a failed instance was restarted")
        self.assertNotEqual(redis(port, "PING", timeout=2), (0, "PONG"))

    def test_a_fast_crash_loop_backs_off_and_recovers(self):
        """Relaunches that exit failing within a second of their launch wait
        10 ms, 20 ms, ... (a cause that passes in a moment, like the previous
        generation's port not yet released, does not use up the crash
        budget in a few ms); once a launch runs again it is healthy. A kill
        relaunches at once (test_kill9, bench/restart_bench.py)."""
        self.h.start_agent()
        port = free_port()
        count = os.path.join(self.h.dir, "launches")
        with open(count, "w") as f:
            f.write("0")
        # Launch 1 runs; launches 2-4 exit at once (status 1); launch 5 runs.
        script = (f'n=$(cat {count}); echo $((n+1)) > {count}; '
                  f'if [ "$n" -ge 1 ] && [ "$n" -le 3 ]; then exit 1; fi; '
                  f'exec {SPARE_KV} --port {port}')
        pid, _ = self.h.run("kv", ["/bin/sh", "-c", script])
        self.h.wait_pong(port)
        time.sleep(1.1)  # its run is long enough not to count as a fast crash
        os.kill(pid, 9)
        inst = self.h.wait_instance("kv", lambda i: i["state"] == "running" and i["pid"] != pid
                                    and i["restarts"] == 4, what="running after the loop")
        self.h.wait_pong(port)
        with open(count) as f:
            self.assertEqual(f.read().strip(), "5")
        with open(os.path.join(self.h.dir, "agent.log")) as f:
            log = f.read()
        self.assertIn("exited failing 2 times in a row within 1000 ms of its launch: the next "
                      "launch waits 10 ms", log)
        self.assertIn("exited failing 3 times in a row within 1000 ms of its launch: the next "
                      "launch waits 20 ms", log)
        self.assertNotIn("exited failing 1 times", log, "the first failing exit relaunches at once")
        self.assertNotIn("exited failing 4 times", log, "the kill counted as a failing exit")
        self.assertEqual(inst["state"], "running")

    def test_run_passes_only_the_needed_environment(self):
        """The caller's secrets stay out of state.json and the instance."""
        self.h.start_agent()
        port = free_port()
        env = dict(os.environ, TEST_SECRET_TOKEN="hunter2", TEST_ASKED_FOR="yes")
        pid, _ = self.h.run("kv", [SPARE_KV, "--port", str(port)], env=env,
                            extra=["--env", "KV_GREETING=hi", "--env-inherit", "TEST_ASKED_FOR"])
        self.h.wait_pong(port)
        with open(os.path.join(self.h.dir, "state.json")) as f:
            state = json.load(f)
        spec = next(i["spec"] for i in state["instances"] if i["spec"]["id"] == "kv")
        names = {kv.split("=", 1)[0]: kv.split("=", 1)[1] for kv in spec["env"]}
        self.assertNotIn("TEST_SECRET_TOKEN", names, "the caller's whole environment was stored")
        self.assertEqual(names.get("KV_GREETING"), "hi")
        self.assertEqual(names.get("TEST_ASKED_FOR"), "yes")
        self.assertEqual(names.get("PATH"), os.environ["PATH"])
        with open(f"/proc/{pid}/environ", "rb") as f:
            live = dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if b"=" in e)
        self.assertNotIn("TEST_SECRET_TOKEN", live)
        self.assertEqual(live.get("KV_GREETING"), "hi")
        self.assertEqual(live.get("SPARE_INSTANCE"), "kv")
        bad = self.h.spare("run", "--agent", self.h.dir, "--id", "kv2", "--policy", "local",
                           "--env", "NOEQUALS", "--", SPARE_KV, "--port", str(free_port()))
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn("--env \"NOEQUALS\": expected NAME=VALUE", bad.stderr)

    def test_bad_agent_toml_names_the_key(self):
        cases = {
            "slot_count": 'slot_count = "many"\n',           # wrong type
            "slot_size": "slot_size = 5000\n",                # not a page multiple
            "restart_window_s": "restart_window_s = 0\n",    # out of range
            "slot_cuont": "slot_cuont = 4\n",                 # unknown key (typo)
        }
        for key, text in cases.items():
            with self.subTest(key):
                with open(os.path.join(self.h.dir, "agent.toml"), "w") as f:
                    f.write(text)
                p = self.h.spare("agent", "--dir", self.h.dir, timeout=10)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                self.assertIn(key, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.h.dir, "agent.sock")))

if __name__ == "__main__":
    unittest.main()
