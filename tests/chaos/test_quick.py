"""The chaos campaign's quick mode in the test suite (tests/chaos/chaos.py):
two minutes of faults on three simulated hosts, then the verdict.

SPARE_CHAOS_SEED replays a seed (printed first); SPARE_CHAOS_SECONDS
changes the length. Release build only (label campaign), as the kill
campaign: under ASan the same faults would mostly measure the sanitizer.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402


class ChaosQuick(unittest.TestCase):
    def test_quick_campaign(self):
        seed = int(os.environ.get("SPARE_CHAOS_SEED", time.time()))
        seconds = float(os.environ.get("SPARE_CHAOS_SECONDS", 120))
        c = chaos.Campaign(seed, seconds, (0.2, 1.2), rotate_s=60,
                           log=lambda m: print(m, flush=True))
        try:
            rep = c.run()
        finally:
            c.close()
        print(json.dumps({k: v for k, v in rep.items() if k != "fault_log"}, indent=1))
        self.assertEqual(rep["anomalies"], [], f"seed {seed}: anomalies (SPARE_CHAOS_SEED={seed}"
                         " replays the schedule)")
        self.assertEqual(rep["verdict"], "PASS")
        # It did what it says: faults of most kinds, failovers, a real load.
        self.assertGreaterEqual(rep["faults"], 40, rep["faults_by_kind"])
        self.assertGreaterEqual(len(rep["faults_by_kind"]), 7, rep["faults_by_kind"])
        self.assertGreaterEqual(rep["failovers_seen"], 3)
        self.assertGreater(rep["acknowledged_writes_checked"], 10000)
        self.assertGreater(rep["reads_checked"], 10000)
        self.assertGreater(rep["incrs_checked"], 5000)


if __name__ == "__main__":
    unittest.main()
