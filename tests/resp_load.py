"""Pipelined RESP load client with an exact ledger, and its checker (stdlib only).

PipelinedLoad keeps `conns` TCP connections to a Redis-protocol port. Each
connection runs in its own thread and pipelines batches of `batch` SETs —
the whole batch is written at once, then its replies are read — with keys
`<prefix>:<conn>:<seq>` (seq counts up per connection, across reconnects, so
every key is written exactly once) and a unique value per key. Replies are
parsed exactly (RespParser: simple strings, errors, integers, bulk strings,
arrays, nulls) and matched to the SETs in order:
  - `+OK`: acknowledged;
  - an error reply: rejected (the SET must not have been applied);
  - anything else, or unparsable bytes: a protocol violation (recorded);
  - no reply because the connection broke (EOF, reset, timeout): sent,
    outcome unknown. The thread then reconnects — every `retry_s`, for at
    most `reconnect_s` per outage; past that it gives up and stops (recorded)
    — and continues with the next sequence numbers.
A SET is entered in the ledger before its bytes are written, so the ledger
never misses a SET the server could have seen.

check(port) verifies the ledger against a live server over one connection
(pipelined MGETs) and must run while the load is paused or stopped:
  - every acknowledged SET is present with exactly its value;
  - a SET of unknown outcome is absent or holds its value; once a check saw
    it present it counts as acknowledged from then on (a durable server
    cannot lose what it has served);
  - a rejected SET is absent;
  - nothing exists that was never sent: the server has no SCAN/KEYS, so the
    checker probes, per connection, the `probe` sequence numbers after the
    last one sent, and `probe` numbers of `spare_conns` connection ids past
    the last; every probed key must be absent.
full=True reads every key sent. full=False (cheap enough for every kill)
reads the SETs sent since the previous check, every SET still of unknown
outcome, and the probes; acknowledged SETs that earlier checks verified are
not re-read. Either way CheckReport.present is the number of loader keys the
server must hold — counted, plus (full=False) the acknowledged ones not
re-read — so a DBSIZE balance against it also catches their loss.

Library use:
    load = PipelinedLoad(port, conns=4, batch=16, seed=1)
    load.start(); ...; load.pause()          # returns once no SET is in flight
    report = load.check(port); assert report.ok, report.violations
    load.resume(); ...; load.stop()

CLI: python3 tests/resp_load.py --port P --seconds S [--conns N] [--batch N]
     [--prefix p] [--check] [--json]    (exit 1 when --check finds violations)
"""

import argparse
import json
import random
import socket
import sys
import threading
import time


class ProtocolError(Exception):
    """Bytes that are not a valid RESP2 reply."""


class Simple(str):
    """A simple-string reply (`+OK`)."""


class Error(str):
    """An error reply (`-ERR ...`), without the leading '-'."""


_NEED_MORE = object()


class RespParser:
    """Incremental RESP2 reply parser: feed() bytes, then get() replies.

    Replies: Simple, Error, int, bytes (bulk), None (null bulk or null
    array), list (array, elements parsed recursively). get() returns
    RespParser.NEED_MORE while the next reply is incomplete and raises
    ProtocolError on malformed input (a bad type byte, a bad length, a bulk
    string not followed by CRLF).
    """

    NEED_MORE = _NEED_MORE
    MAX_DEPTH = 32

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data):
        if self.pos > 65536 and self.pos * 2 > len(self.buf):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def get(self):
        r = self._parse(self.pos, 0)
        if r is _NEED_MORE:
            return _NEED_MORE
        value, self.pos = r
        return value

    def _line(self, pos):
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            if len(self.buf) - pos > 1 << 20:
                raise ProtocolError(f"line longer than 1 MiB at offset {pos}")
            return _NEED_MORE
        return bytes(self.buf[pos:end]), end + 2

    @staticmethod
    def _int(raw, what):
        text = raw.decode("ascii", "replace")
        body = text[1:] if text.startswith("-") else text
        if not body.isdigit():
            raise ProtocolError(f"{what} is not an integer: {text!r}")
        return int(text)

    def _parse(self, pos, depth):
        if pos >= len(self.buf):
            return _NEED_MORE
        kind = self.buf[pos:pos + 1]
        r = self._line(pos + 1)
        if r is _NEED_MORE:
            return _NEED_MORE
        line, pos = r
        if kind == b"+":
            return Simple(line.decode("utf-8", "replace")), pos
        if kind == b"-":
            return Error(line.decode("utf-8", "replace")), pos
        if kind == b":":
            return self._int(line, "integer reply"), pos
        if kind == b"$":
            n = self._int(line, "bulk length")
            if n == -1:
                return None, pos
            if n < 0:
                raise ProtocolError(f"bulk length {n}")
            if len(self.buf) < pos + n + 2:
                return _NEED_MORE
            if self.buf[pos + n:pos + n + 2] != b"\r\n":
                raise ProtocolError(f"bulk string of {n} bytes not followed by CRLF")
            return bytes(self.buf[pos:pos + n]), pos + n + 2
        if kind == b"*":
            n = self._int(line, "array length")
            if n == -1:
                return None, pos
            if n < 0:
                raise ProtocolError(f"array length {n}")
            if depth >= self.MAX_DEPTH:
                raise ProtocolError(f"arrays nested deeper than {self.MAX_DEPTH}")
            items = []
            buf = self.buf
            for _ in range(n):
                if buf[pos:pos + 1] == b"$":  # inline fast path for MGET's bulk strings
                    end = buf.find(b"\r\n", pos + 1, pos + 24)
                    if end > 0:
                        raw = bytes(buf[pos + 1:end])
                        if raw.isdigit():
                            start, stop = end + 2, end + 2 + int(raw)
                            if len(buf) < stop + 2:
                                return _NEED_MORE
                            if buf[stop:stop + 2] != b"\r\n":
                                raise ProtocolError(f"bulk string of {int(raw)} bytes not"
                                                    " followed by CRLF")
                            items.append(bytes(buf[start:stop]))
                            pos = stop + 2
                            continue
                        if raw == b"-1":
                            items.append(None)
                            pos = end + 2
                            continue
                r = self._parse(pos, depth + 1)
                if r is _NEED_MORE:
                    return _NEED_MORE
                value, pos = r
                items.append(value)
            return items, pos
        raise ProtocolError(f"unknown reply type {bytes(kind)!r} at offset {pos - len(line) - 3}")


def encode(*args):
    """One command as a RESP multibulk request (str args are UTF-8 encoded)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else a.encode() if isinstance(a, str) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Conn:
    """A blocking client connection with an exact reply parser."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = RespParser()

    def send(self, data):
        self.sock.sendall(data)

    def read_reply(self):
        """The next reply; raises ConnectionError on EOF, OSError on reset/timeout."""
        while True:
            r = self.parser.get()
            if r is not _NEED_MORE:
                return r
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.parser.feed(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class ConnLedger:
    """What one load connection sent and what came of it."""

    def __init__(self, cid):
        self.cid = cid
        self.sent = {}         # seq -> value (bytes), entered before the write
        self.acked = set()     # seqs answered +OK
        self.rejected = {}     # seq -> error text
        self.unknown = set()   # seqs without a reply (or with a bad one), not yet seen
        self.seen = set()      # unknown-outcome seqs a check found present
        self.checked = 0       # seqs < checked were covered by a check
        self.next_seq = 0


class CheckReport:
    """The outcome of one check(): counts and the violations found."""

    def __init__(self, full):
        self.full = full
        self.acked = 0            # acknowledged SETs verified (incl. ones seen earlier)
        self.unknown_present = 0  # unknown outcome, found with its value
        self.unknown_absent = 0
        self.rejected = 0         # rejected SETs verified absent
        self.probed = 0           # never-sent keys verified absent
        self.present = 0          # loader keys the server must hold (see check())
        self.violations = []

    @property
    def ok(self):
        return not self.violations

    def add(self, msg):
        self.violations.append(msg)

    def summary(self):
        v = f"{len(self.violations)} violations" + (
            f" (first: {self.violations[0]})" if self.violations else "")
        return (f"{'full' if self.full else 'delta'} check: {self.acked} acknowledged present,"
                f" unknown {self.unknown_present} present/{self.unknown_absent} absent,"
                f" {self.rejected} rejected absent, {self.probed} unsent absent; {v}")

    def as_dict(self):
        return {k: getattr(self, k) for k in ("full", "acked", "unknown_present",
                                               "unknown_absent", "rejected", "probed",
                                               "present", "violations")}


class PipelinedLoad:
    """Threads pipelining SET batches; see the module docstring."""

    def __init__(self, port, conns=4, batch=16, prefix="p", value_len=24, seed=None,
                 host="127.0.0.1", io_timeout=10.0, reconnect_s=30.0, retry_s=0.005,
                 probe=None, spare_conns=2):
        if conns < 1 or batch < 1 or value_len < 20:
            raise ValueError(f"conns ({conns}) and batch ({batch}) must be >= 1,"
                             f" value_len ({value_len}) >= 20")
        if not prefix or any(c in prefix for c in " \r\n"):
            raise ValueError(f"prefix {prefix!r} must be non-empty, without spaces or newlines")
        self.port, self.host, self.batch, self.prefix = port, host, batch, prefix
        self.value_len, self.io_timeout = value_len, io_timeout
        self.reconnect_s, self.retry_s = reconnect_s, retry_s
        self.probe = probe if probe is not None else max(64, 2 * batch)
        self.spare_conns = spare_conns
        self.ledgers = [ConnLedger(i) for i in range(conns)]
        self.rng = random.Random(seed)
        self.errors = []           # protocol violations and give-ups seen by the threads
        self.stats = {"batches": 0, "connects": 0, "breaks": 0, "timeouts": 0}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._paused = False
        self._stop = False
        self._busy = 0             # threads inside a batch or a connect attempt
        self._threads = []
        self._started = time.monotonic()

    def key(self, cid, seq):
        return f"{self.prefix}:{cid}:{seq}"

    # --- control ---------------------------------------------------------

    def start(self, paused=False):
        """Starts the threads; with paused=True they wait for resume()."""
        if self._threads:
            raise RuntimeError("PipelinedLoad already started")
        self._paused = paused
        self._started = time.monotonic()
        for lg in self.ledgers:
            t = threading.Thread(target=self._run, args=(lg, random.Random(self.rng.random())),
                                 daemon=True, name=f"resp-load-{lg.cid}")
            self._threads.append(t)
            t.start()

    def pause(self, timeout=30.0):
        """Returns once every thread is between batches (no SET in flight)."""
        with self._cond:
            self._paused = True
            if not self._cond.wait_for(lambda: self._busy == 0, timeout):
                raise RuntimeError(f"load did not pause within {timeout} s")

    def resume(self):
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def retarget(self, host, port=None):
        """Connections made from now on go to host (and port): where a
        failed-over instance answers now. Open ones stay until they break."""
        with self._lock:
            self.host = host
            if port is not None:
                self.port = port

    def stop(self, timeout=30.0):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"load threads did not stop within {timeout} s: {alive}")

    def _enter(self):
        """Waits while paused; False once stopped. Marks the thread busy."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop or not self._paused)
            if self._stop:
                return False
            self._busy += 1
            return True

    def _leave(self):
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    # --- the load threads -----------------------------------------------

    def _run(self, lg, rng):
        conn, down_since = None, None
        try:
            while self._enter():
                try:
                    if conn is None:
                        try:
                            conn = Conn(self.port, self.host, self.io_timeout)
                            down_since = None
                            self._count("connects")
                        except OSError as e:
                            down_since = down_since or time.monotonic()
                            if time.monotonic() - down_since > self.reconnect_s:
                                self._error(f"conn {lg.cid}: no connection for"
                                            f" {self.reconnect_s} s, giving up: {e}")
                                return
                            time.sleep(self.retry_s)
                            continue
                    if not self._batch(conn, lg, rng):
                        conn.close()
                        conn = None
                        down_since = time.monotonic()
                finally:
                    self._leave()
        finally:
            if conn is not None:
                conn.close()

    def _batch(self, conn, lg, rng):
        """One pipelined batch; False when the connection broke."""
        seqs, out = [], []
        for _ in range(self.batch):
            seq = lg.next_seq
            lg.next_seq += 1
            value = f"{lg.cid}:{seq}:{rng.getrandbits(64):016x}:".encode()
            value += b"x" * (self.value_len - len(value))
            lg.sent[seq] = value
            seqs.append(seq)
            out.append(encode("SET", self.key(lg.cid, seq), value))
        lg.unknown.update(seqs)  # until a reply says otherwise
        try:
            conn.send(b"".join(out))
            for seq in seqs:
                reply = conn.read_reply()
                if isinstance(reply, Simple) and reply == "OK":
                    lg.acked.add(seq)
                    lg.unknown.discard(seq)
                elif isinstance(reply, Error):
                    lg.rejected[seq] = str(reply)
                    lg.unknown.discard(seq)
                else:
                    self._error(f"SET {self.key(lg.cid, seq)} answered {reply!r}")
        except ProtocolError as e:
            self._error(f"conn {lg.cid}: unparsable reply: {e}")
            return False
        except socket.timeout:
            self._count("timeouts")
            return False
        except OSError:  # EOF (ConnectionError), reset, broken pipe
            self._count("breaks")
            return False
        self._count("batches")
        return True

    def _count(self, what):
        with self._lock:
            self.stats[what] += 1

    def _error(self, msg):
        with self._lock:
            if len(self.errors) < 100:
                self.errors.append(msg)

    # --- results ---------------------------------------------------------

    def totals(self):
        sent = sum(len(lg.sent) for lg in self.ledgers)
        acked = sum(len(lg.acked) for lg in self.ledgers)
        rejected = sum(len(lg.rejected) for lg in self.ledgers)
        return {"sent": sent, "acked": acked, "unknown": sent - acked - rejected,
                "seen": sum(len(lg.seen) for lg in self.ledgers),
                "rejected": rejected, "errors": len(self.errors), **self.stats}

    def summary(self):
        t = self.totals()
        s = time.monotonic() - self._started
        return (f"{t['sent']} SETs sent in {t['batches']} batches of {self.batch} over"
                f" {len(self.ledgers)} connections ({t['acked'] / max(s, 1e-9):.0f} acked/s over"
                f" {s:.1f} s, pauses included):"
                f" {t['acked']} acknowledged, {t['unknown']} unknown, {t['rejected']} rejected;"
                f" {t['connects']} connects, {t['breaks']} breaks, {t['timeouts']} timeouts,"
                f" {t['errors']} protocol errors")

    def check(self, port=None, full=True, chunk=1000, timeout=60.0):
        """Verifies the ledger against the server; see the module docstring.

        Must run while paused or stopped (raises RuntimeError otherwise).
        Protocol errors the load threads recorded are violations too.
        """
        with self._lock:
            if self._threads and not (self._paused or self._stop) or self._busy:
                raise RuntimeError("check() needs the load paused or stopped")
        rep = CheckReport(full)
        for e in self.errors:
            rep.add(f"load: {e}")
        want = []  # (ledger, seq or None for a probe, key)
        for lg in self.ledgers:
            start = 0 if full else lg.checked
            if not full:  # still unknown from earlier checks; earlier acked ones: assumed
                old = sorted(seq for seq in lg.unknown if seq < lg.checked)
                rep.present += lg.checked - len(old) - sum(seq < lg.checked
                                                           for seq in lg.rejected)
                want += [(lg, seq, self.key(lg.cid, seq)) for seq in old]
            want += [(lg, seq, self.key(lg.cid, seq)) for seq in range(start, lg.next_seq)]
            want += [(None, None, self.key(lg.cid, seq))
                     for seq in range(lg.next_seq, lg.next_seq + self.probe)]
        for cid in range(len(self.ledgers), len(self.ledgers) + self.spare_conns):
            want += [(None, None, self.key(cid, seq)) for seq in range(self.probe)]
        values = mget(port or self.port, [k for _, _, k in want], self.host, chunk, timeout)
        for (lg, seq, key), got in zip(want, values):
            if lg is None:
                rep.probed += 1
                if got is not None:
                    rep.add(f"{key} exists ({got[:40]!r}) but was never sent")
                continue
            rep.present += got is not None
            sent = lg.sent[seq]
            if seq in lg.acked or seq in lg.seen:
                rep.acked += 1
                if got != sent:
                    rep.add(f"acknowledged {key} " + (
                        "lost" if got is None else f"holds {got[:40]!r}, not {sent[:40]!r}"))
            elif seq in lg.rejected:
                rep.rejected += 1
                if got is not None:
                    rep.add(f"{key} exists although its SET was rejected ({lg.rejected[seq]})")
            elif got is None:
                rep.unknown_absent += 1
            elif got == sent:
                rep.unknown_present += 1
                lg.seen.add(seq)
                lg.unknown.discard(seq)
            else:
                rep.add(f"{key} holds {got[:40]!r}, never sent (sent {sent[:40]!r})")
        for lg in self.ledgers:
            lg.checked = lg.next_seq
        return rep


def mget(port, keys, host="127.0.0.1", chunk=1000, timeout=60.0, depth=8):
    """Values (bytes or None) of keys: MGETs of `chunk` keys, `depth` in flight."""
    conn = Conn(port, host, timeout)
    try:
        chunks = [keys[i:i + chunk] for i in range(0, len(keys), chunk)]
        values, sent = [], 0
        for i, ks in enumerate(chunks):
            while sent < len(chunks) and sent < i + depth:
                conn.send(encode("MGET", *chunks[sent]))
                sent += 1
            reply = conn.read_reply()
            if not isinstance(reply, list) or len(reply) != len(ks) or not all(
                    v is None or isinstance(v, bytes) for v in reply):
                raise ProtocolError(f"MGET of {len(ks)} keys answered {str(reply)[:200]}")
            values += reply
        return values
    finally:
        conn.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Pipelined SET load with an exact ledger.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16, help="SETs pipelined per batch")
    ap.add_argument("--prefix", default="p")
    ap.add_argument("--value-len", type=int, default=24)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--check", action="store_true", help="verify the ledger after the run")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    if not 0 < a.port < 65536 or a.seconds <= 0:
        ap.error(f"--port must be 1..65535 (got {a.port}), --seconds > 0 (got {a.seconds})")
    try:
        load = PipelinedLoad(a.port, a.conns, a.batch, a.prefix, a.value_len, a.seed, a.host)
    except ValueError as e:
        ap.error(str(e))
    load.start()
    time.sleep(a.seconds)
    load.stop()
    out = {"load": load.totals()}
    rep = None
    if a.check:
        rep = load.check()
        out["check"] = rep.as_dict()
    if a.json:
        print(json.dumps(out))
    else:
        print(load.summary())
        if rep:
            print(rep.summary())
            for v in rep.violations[:20]:
                print(f"  {v}")
    return 1 if rep is not None and not rep.ok else 0


if __name__ == "__main__":
    sys.exit(main())
