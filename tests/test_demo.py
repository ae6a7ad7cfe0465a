"""`spare demo` runs end to end, reports no loss and cleans up after itself."""

import os
import re
import subprocess
import unittest

from spare_harness import SPARE, pid_alive

SUMMARY = re.compile(r"(\d+) kills, restart p50 [\d.]+ ms, max [\d.]+ ms, (\d+) keys verified,"
                     r" 0 lost")


class DemoTest(unittest.TestCase):
    def test_demo(self):
        p = subprocess.run([SPARE, "demo", "--kills", "3"], capture_output=True, text=True,
                           timeout=240)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        m = SUMMARY.search(p.stdout)
        self.assertIsNotNone(m, p.stdout)
        self.assertEqual(int(m.group(1)), 3)
        self.assertGreater(int(m.group(2)), 0)
        self.assertEqual(len(re.findall(r"^kill \d+/3:", p.stdout, re.M)), 3, p.stdout)
        d = re.search(r"agent dir (\S+)", p.stdout)
        self.assertIsNotNone(d, p.stdout)
        self.assertFalse(os.path.exists(d.group(1)), "demo left its directory behind")
        # Nothing that demo started may outlive it.
        marker = d.group(1).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f, \
                        open(f"/proc/{pid}/cmdline", "rb") as g:
                    mine = marker in f.read() or marker in g.read()
            except OSError:
                continue
            if mine and pid_alive(int(pid)):
                os.kill(int(pid), 9)
                self.fail(f"process {pid} started by the demo is still running")


if __name__ == "__main__":
    unittest.main()
