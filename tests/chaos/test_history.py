"""The chaos checker on made-up histories: each anomaly it exists to catch
is caught, and a correct history passes (no processes, no network)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from history import COUNTERS, KEYS_PER_CONN, Op, Workload, value_of  # noqa: E402

A, B = "10.0.1.2", "10.0.3.2"  # a primary and the spare host


class Hist:
    """Builds a Workload's history by hand."""

    def __init__(self):
        self.wl = Workload("t.1", 1, [A, B], seed=1, conns=2)

    def op(self, kind, conn, keys, invoke, done, result=None, outcome="ok", host=A):
        o = (self.wl._write(kind, conn, keys) if kind in ("set", "del", "mset")
             else Op(kind, conn, keys))
        o.invoke, o.done, o.outcome, o.result, o.host = invoke, done, outcome, result, host
        if o.outcome == "ok" and kind in ("set", "mset") and result is None:
            o.result = "OK"
        self.wl.ops.append(o)
        if o.versions:
            for k, v in zip(o.keys, o.versions):
                self.wl.writes.setdefault(k, {})[v] = o
        if kind == "incr":
            self.wl.counter_incrs[keys[0]].append(o)
        if o.done is not None and outcome in ("ok", "error"):
            self.wl.first_reply.setdefault(host, o.done)
            self.wl.first_reply[host] = min(self.wl.first_reply[host], o.done)
        return o

    def final(self, **overrides):
        f = {k: None for k in self.wl.keys()}
        f.update({k.replace("_", ":"): v for k, v in overrides.items()})
        self.wl.final = f
        return self.wl.check()[1]


K = "t.1:w0:0"
C = "t.1:c0"


class CheckerTest(unittest.TestCase):
    def good(self):
        h = Hist()
        h.op("set", 0, [K], 1.0, 1.1)                      # version 1
        h.op("set", 0, [K], 1.2, 1.3)                      # version 2
        h.op("get", 1, [K], 1.4, 1.5, result=value_of(0, 2))
        h.op("incr", 0, [C], 1.0, 1.1, result=1)
        h.op("incr", 1, [C], 1.2, 1.3, result=2)
        h.op("get", 1, [C], 1.4, 1.5, result=b"2")
        return h

    def test_a_correct_history_passes(self):
        h = self.good()
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"2"})
        self.assertEqual(v, [])

    def test_a_lost_acknowledged_write_is_caught(self):
        h = self.good()
        v = h.final(**{"t.1_w0_0": value_of(0, 1), "t.1_c0": b"2"})
        self.assertTrue(any("an acknowledged write was lost" in m for m in v), v)
        v = h.final(**{"t.1_c0": b"2"})  # nil: no DEL was ever sent
        self.assertTrue(any("is nil" in m for m in v), v)

    def test_a_later_write_of_unknown_outcome_may_be_there(self):
        h = self.good()
        h.op("set", 0, [K], 1.6, None, outcome="unknown")  # version 3
        self.assertEqual(h.final(**{"t.1_w0_0": value_of(0, 3), "t.1_c0": b"2"}), [])
        self.assertEqual(h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"2"}), [])

    def test_a_stale_read_is_caught(self):
        h = self.good()
        h.op("get", 1, [K], 1.45, 1.6, result=value_of(0, 1))  # sent after v2 was acked
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"2"})
        self.assertTrue(any("a stale read" in m for m in v), v)

    def test_a_read_of_a_concurrent_write_is_not_stale(self):
        h = Hist()
        h.op("set", 0, [K], 1.0, 1.1)
        h.op("set", 0, [K], 1.2, 1.5)
        h.op("get", 1, [K], 1.3, 1.4, result=value_of(0, 1))  # v2 not yet acked
        h.op("get", 1, [K], 1.3, 1.4, result=value_of(0, 2))  # or already applied
        self.assertEqual(h.final(**{"t.1_w0_0": value_of(0, 2)}), [])

    def test_a_value_never_written_is_caught(self):
        h = self.good()
        h.op("get", 1, [K], 1.6, 1.7, result=value_of(0, 9))
        h.op("get", 1, [K], 1.6, 1.7, result=b"garbage")
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"2"})
        self.assertEqual(sum("no such write" in m or "never written" in m for m in v), 2, v)

    def test_a_deleted_key_reads_nil_only_after_a_del(self):
        h = Hist()
        h.op("set", 0, [K], 1.0, 1.1)
        h.op("del", 0, [K], 1.2, 1.3, result=1)
        h.op("get", 1, [K], 1.4, 1.5, result=None)
        self.assertEqual(h.final(), [])

    def test_a_counter_going_backwards_is_caught(self):
        h = self.good()
        h.op("incr", 0, [C], 1.4, 1.5, result=2)  # sent after 2 was acknowledged
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"3"})
        self.assertTrue(any("went backwards" in m for m in v), v)
        self.assertTrue(any("an increment was lost" in m for m in v), v)

    def test_a_stale_counter_read_and_a_lost_increment_are_caught(self):
        h = self.good()
        h.op("get", 0, [C], 1.4, 1.5, result=b"1")
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"1"})
        self.assertTrue(any("GET of counter" in m and "stale" in m for m in v), v)
        self.assertTrue(any("counter t.1:c0 is 1 at the end" in m for m in v), v)

    def test_phantom_increments_are_caught(self):
        h = self.good()
        v = h.final(**{"t.1_w0_0": value_of(0, 2), "t.1_c0": b"7"})
        self.assertTrue(any("only 2 INCRs were sent" in m for m in v), v)

    def test_two_owners_answering_is_caught(self):
        h = self.good()
        h.op("set", 0, [K], 2.0, 2.1, host=B)            # the replacement answers at 2.1
        h.op("get", 1, [K], 2.2, 2.3, result=value_of(0, 3), host=B)
        h.op("get", 1, [K], 2.2, 2.4, result=value_of(0, 3), host=A)  # the old one too
        v = h.final(**{"t.1_w0_0": value_of(0, 3), "t.1_c0": b"2"})
        self.assertTrue(any("double owner" in m for m in v), v)

    def test_the_old_owner_finishing_earlier_commands_is_not_two_owners(self):
        h = self.good()
        h.op("set", 0, [K], 1.9, 2.2)                    # sent before B answered
        h.op("set", 0, [K], 2.0, 2.1, host=B)
        self.assertEqual(h.final(**{"t.1_w0_0": value_of(0, 4), "t.1_c0": b"2"}), [])

    def test_an_unreadable_final_state_is_an_anomaly(self):
        h = self.good()
        self.assertTrue(h.wl.check()[1])

    def test_key_space(self):
        self.assertEqual(len(Hist().wl.keys()), 2 * KEYS_PER_CONN + COUNTERS)


if __name__ == "__main__":
    unittest.main()
