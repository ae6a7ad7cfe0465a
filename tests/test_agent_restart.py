"""The agent dies under a running instance; a new agent re-adopts it.

While no agent runs nothing can become durable, so no reply may be released:
a SET sent then must stay unanswered (invariant 2). A new agent on the same
directory re-adopts the instance (same pid), the held reply is released, and
after that the new agent restarts the instance on a kill -9 with all data.
"""

import os
import subprocess
import time
import unittest

from spare_harness import REDIS_CLI, SPARE_KV, Harness, free_port, mget, pid_alive, redis


class AgentRestartTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def assert_keys(self, port, expected):
        keys = sorted(expected)
        self.assertEqual(dict(zip(keys, mget(port, keys))), expected)

    def test_agent_kill9_then_readopt(self):
        h = self.h
        h.start_agent()
        port = free_port()
        pid, gen = h.run("kv", [SPARE_KV, "--port", str(port)])
        h.wait_pong(port)
        data = {f"a:{i}": f"before:{i}" for i in range(200)}
        for k, v in data.items():
            self.assertEqual(redis(port, "SET", k, v), (0, "OK"))
        epoch = h.instance("kv")["epoch"]

        h.kill_agent()
        self.assertTrue(pid_alive(pid), "the instance died with its agent")
        held = subprocess.Popen([REDIS_CLI, "-p", str(port), "SET", "held", "yes"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.0)
            self.assertIsNone(held.poll(), "a reply was released while no agent could commit"
                              f" it: {held.stdout.read() if held.poll() is not None else ''}")
            self.assertTrue(pid_alive(pid), "the instance died while its agent was down")

            h.start_agent()
            inst = h.wait_instance("kv", lambda i: i["state"] == "running", timeout=15,
                                   what="re-adopted and running")
            self.assertEqual(inst["pid"], pid, "re-adoption must keep the running process")
            self.assertGreaterEqual(inst["epoch"], epoch)
            out, _ = held.communicate(timeout=15)
        finally:
            if held.poll() is None:
                held.kill()
                held.wait()
        self.assertEqual((held.returncode, out.strip()), (0, "OK"), "held SET not released")
        data["held"] = "yes"
        self.assert_keys(port, data)
        for i in range(50):
            data[f"b:{i}"] = f"after:{i}"
            self.assertEqual(redis(port, "SET", f"b:{i}", data[f"b:{i}"]), (0, "OK"))

        os.kill(pid, 9)
        inst = h.wait_instance("kv", lambda i: i["state"] == "running" and i["pid"] != pid,
                               timeout=15, what="restarted by the new agent")
        self.assertEqual(inst["restarts"], 1)
        self.assertGreater(inst["generation"], gen)
        h.wait_pong(port)
        self.assert_keys(port, data)
        rc, out = redis(port, "DBSIZE")
        self.assertEqual((rc, out), (0, str(len(data))))


if __name__ == "__main__":
    unittest.main()
