"""`spare demo` runs end to end, reports no loss and cleans up after itself."""

import os
import re
import subprocess
import unittest

from spare_harness import SPARE, pid_alive

SUMMARY = re.compile(r"(\d+) kills, restart p50 [\d.]+ ms, max [\d.]+ ms, (\d+) keys verified,"
                     r" 0 lost")
HOT = re.compile(r"part 2: 2 failovers, kill -> first reply p50 [\d.]+ ms, max [\d.]+ ms; "
                 r"(\d+) acknowledged writes verified on 4 instances, 0 lost")
FAILED_OVER = re.compile(r"^(kv-a\d): failed over to the spare host in [\d.]+ ms \(detection "
                         r"[\d.]+, .*\); (\d+) writes acknowledged before the kill, (\d+) of "
                         r"them on the replacement; \d+ verified in all, 0 lost$", re.M)


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
        # Part 2: host a's two instances failed over with everything.
        h = HOT.search(p.stdout)
        self.assertIsNotNone(h, p.stdout)
        self.assertGreater(int(h.group(1)), 0)
        moved = FAILED_OVER.findall(p.stdout)
        self.assertEqual(sorted(m[0] for m in moved), ["kv-a1", "kv-a2"], p.stdout)
        for _, before, kept in moved:
            self.assertGreater(int(before), 0, p.stdout)
            self.assertEqual(before, kept, p.stdout)
        self.assertEqual(len(re.findall(r"^kv-b\d \(host b, untouched\): \d+ acknowledged "
                                        r"writes verified, 0 lost$", p.stdout, re.M)), 2,
                         p.stdout)
        d = re.search(r"agent dir ([^\s,]+)", p.stdout)
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
