"""The chaos campaign's clients and checker: a mixed RESP load whose every
request and reply is recorded, and the checks run on that history.

One Workload is one incarnation of an instance (tests/chaos/chaos.py makes
a new one with fresh keys when an instance has moved to the spare host or
grown old). Its clients are `conns` connections, each a thread that
pipelines batches of 1..8 commands at random:

  SET / DEL / MSET  on keys the connection owns: `<prefix>:w<conn>:<i>`.
                    One writer per key, so every write of a key has a
                    version (1, 2, ... in the order the writer sent them)
                    and the value `<conn>:<version>` names it; a DEL is a
                    version with no value.
  INCR              on shared counters `<prefix>:c<j>` (any connection).
  GET               of any connection's key or of a counter.

Each command is recorded before its bytes are written (invoke time) and
completed by its reply (done time, the reply, the host it came from). A
connection that breaks (EOF, reset, no reply within `reply_timeout`) marks
what it had in flight "unknown" and reconnects, trying the instance's
possible hosts in turn (its home host, the spare host).

check() runs once the clients are stopped and the final state was read
(final_read); it verifies:
  - lost: every key's final state is its last acknowledged write or a
    later write of unknown outcome; every counter is at least its highest
    acknowledged INCR and at most the INCRs sent;
  - stale: a GET returns the value of a version at least as new as the
    last write acknowledged before the GET was sent (nil only if a DEL, or
    nothing, is that new), and only values that were sent before it
    returned; a counter read is at least the highest INCR acknowledged
    before the read was sent;
  - backwards: two INCRs of a counter where the first was acknowledged
    before the second was sent: the second's value is greater; no two
    acknowledged INCRs return the same value;
  - double-owner: no reply from one host to a command sent after another
    host had already answered for this incarnation (an old owner
    answering what it received after its replacement was serving).
A violation is a message naming the key, the operations and their times.
"""

import random
import socket
import threading
import time

import sys
import os

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from resp_load import Error, ProtocolError, RespParser, Simple, encode  # noqa: E402

KEYS_PER_CONN = 6
COUNTERS = 3


class Op:
    __slots__ = ("kind", "conn", "keys", "versions", "invoke", "done", "outcome", "result",
                 "host")

    def __init__(self, kind, conn, keys, versions=None):
        self.kind = kind          # set, del, mset, incr, get
        self.conn = conn
        self.keys = keys          # list of key names
        self.versions = versions  # writes: the version each key gets
        self.invoke = 0.0
        self.done = None
        self.outcome = "unknown"  # ok, error, unknown
        self.result = None
        self.host = None


def read_reply(sock, parser):
    """The next reply on sock; ConnectionError on EOF, OSError on a timeout."""
    while True:
        r = parser.get()
        if r is not RespParser.NEED_MORE:
            return r
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        parser.feed(data)


def value_of(conn, version):
    return f"{conn}:{version}".encode()


class Workload:
    """The load and history of one incarnation of an instance."""

    def __init__(self, name, port, hosts, seed, conns=3, pause_s=0.002, reply_timeout=3.0):
        self.name = name              # the key prefix, e.g. "h1.3"
        self.port = port
        self.hosts = list(hosts)      # client IPs it may be reached at, home first
        self.rng = random.Random(seed)
        self.conns = conns
        self.pause_s = pause_s
        self.reply_timeout = reply_timeout
        self.ops = []                 # every Op, in invoke order per connection
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = []
        self.next_version = {}        # key -> last version handed out
        self.writes = {}              # key -> {version: Op}
        self.counter_incrs = {f"{name}:c{j}": [] for j in range(COUNTERS)}
        self.final = None             # key -> bytes or None, from final_read
        self.reconnects = 0
        self.first_reply = {}         # host -> done time of its first reply
        self.reply_count = {}         # host -> replies

    # --- load ------------------------------------------------------------

    def own_key(self, conn, i):
        return f"{self.name}:w{conn}:{i}"

    def start(self):
        for c in range(self.conns):
            t = threading.Thread(target=self._run, args=(c, random.Random(self.rng.random())),
                                 daemon=True, name=f"{self.name}-c{c}")
            t.start()
            self.threads.append(t)

    def stop(self, timeout=10):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout)
        return all(not t.is_alive() for t in self.threads)

    def _batch(self, conn, rng):
        ops = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.30:
                ops.append(self._write("set", conn, [self.own_key(conn, rng.randrange(KEYS_PER_CONN))]))
            elif r < 0.38:
                ops.append(self._write("del", conn, [self.own_key(conn, rng.randrange(KEYS_PER_CONN))]))
            elif r < 0.48:
                a, b = rng.sample(range(KEYS_PER_CONN), 2)
                ops.append(self._write("mset", conn, [self.own_key(conn, a), self.own_key(conn, b)]))
            elif r < 0.68:
                ops.append(Op("incr", conn, [f"{self.name}:c{rng.randrange(COUNTERS)}"]))
            elif r < 0.93:
                ops.append(Op("get", conn, [self.own_key(rng.randrange(self.conns),
                                                         rng.randrange(KEYS_PER_CONN))]))
            else:
                ops.append(Op("get", conn, [f"{self.name}:c{rng.randrange(COUNTERS)}"]))
        return ops

    def _write(self, kind, conn, keys):
        versions = []
        for k in keys:
            v = self.next_version.get(k, 0) + 1
            self.next_version[k] = v
            versions.append(v)
        return Op(kind, conn, keys, versions)

    @staticmethod
    def _encode(op):
        if op.kind == "set":
            return encode("SET", op.keys[0], value_of(op.conn, op.versions[0]))
        if op.kind == "del":
            return encode("DEL", op.keys[0])
        if op.kind == "mset":
            args = ["MSET"]
            for k, v in zip(op.keys, op.versions):
                args += [k, value_of(op.conn, v)]
            return encode(*args)
        if op.kind == "incr":
            return encode("INCR", op.keys[0])
        return encode("GET", op.keys[0])

    def _connect(self, start):
        """A connection to whichever host answers, trying each once from
        `start`; (socket, host index) or (None, start)."""
        for i in range(len(self.hosts)):
            h = (start + i) % len(self.hosts)
            try:
                s = socket.create_connection((self.hosts[h], self.port), timeout=0.3)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(self.reply_timeout)
                return s, h
            except OSError:
                continue
        return None, start

    def _run(self, conn, rng):
        sock, where = None, 0
        parser = RespParser()
        while not self.stop_ev.is_set():
            if sock is None:
                sock, where = self._connect(where)
                parser = RespParser()
                if sock is None:
                    self.stop_ev.wait(0.02)
                    continue
                with self.lock:
                    self.reconnects += 1
            ops = self._batch(conn, rng)
            payload = b"".join(self._encode(o) for o in ops)
            host = self.hosts[where]
            now = time.monotonic()
            with self.lock:
                for o in ops:
                    o.invoke = now
                    o.host = host
                    self.ops.append(o)
                    if o.versions:
                        for k, v in zip(o.keys, o.versions):
                            self.writes.setdefault(k, {})[v] = o
                    if o.kind == "incr":
                        self.counter_incrs[o.keys[0]].append(o)
            try:
                sock.sendall(payload)
                for o in ops:
                    self._complete(o, read_reply(sock, parser), host)
            except (OSError, ConnectionError, ProtocolError):
                try:
                    sock.close()
                except OSError:
                    pass
                sock = None
                where = (where + 1) % len(self.hosts)  # the other host first next time
                continue
            if self.pause_s:
                self.stop_ev.wait(rng.uniform(0, 2 * self.pause_s))
        if sock is not None:
            sock.close()

    def _complete(self, o, r, host):
        t = time.monotonic()
        with self.lock:
            o.done = t
            if host not in self.first_reply:
                self.first_reply[host] = t
            self.reply_count[host] = self.reply_count.get(host, 0) + 1
        if isinstance(r, Error):
            o.outcome, o.result = "error", str(r)
            return
        o.outcome = "ok"
        o.result = r
        if o.kind in ("set", "mset") and not (isinstance(r, Simple) and r == "OK"):
            o.outcome, o.result = "bad", r
        elif o.kind in ("incr", "del") and not isinstance(r, int):
            o.outcome, o.result = "bad", r
        elif o.kind == "get" and not (r is None or isinstance(r, bytes)):
            o.outcome, o.result = "bad", r

    # --- final state -----------------------------------------------------

    def keys(self):
        ks = [self.own_key(c, i) for c in range(self.conns) for i in range(KEYS_PER_CONN)]
        return ks + list(self.counter_incrs)

    def final_read(self, deadline_s=30):
        """MGET of every key from whichever host answers; True when read."""
        keys = self.keys()
        end = time.monotonic() + deadline_s
        where = 0
        while time.monotonic() < end:
            sock, where = self._connect(where)
            if sock is None:
                time.sleep(0.05)
                continue
            try:
                sock.sendall(encode("MGET", *keys))
                r = read_reply(sock, RespParser())
                if isinstance(r, list) and len(r) == len(keys):
                    self.final = dict(zip(keys, r))
                    self.final_host = self.hosts[where]
                    return True
            except (OSError, ConnectionError, ProtocolError):
                pass
            finally:
                sock.close()
            where = (where + 1) % len(self.hosts)
            time.sleep(0.05)
        return False

    # --- checks ----------------------------------------------------------

    def check(self):
        """(counts, violations): counts by what was checked."""
        v = []
        n = {"ops": len(self.ops), "acked_writes": 0, "unknown": 0, "errors": 0,
             "reads_checked": 0, "incrs_acked": 0, "bad_replies": 0}
        for o in self.ops:
            if o.outcome == "unknown":
                n["unknown"] += 1
            elif o.outcome == "error":
                n["errors"] += 1
            elif o.outcome == "bad":
                n["bad_replies"] += 1
                v.append(f"{self.name}: {o.kind} {o.keys} got a malformed reply {o.result!r}")
            elif o.kind in ("set", "del", "mset"):
                n["acked_writes"] += 1
        if self.final is None:
            v.append(f"{self.name}: the final state could not be read from any host")
            return n, v
        self._check_keys(v, n)
        self._check_counters(v, n)
        self._check_owners(v)
        return n, v

    def _versions(self, key):
        return self.writes.get(key, {})

    def _check_keys(self, v, n):
        for c in range(self.conns):
            for i in range(KEYS_PER_CONN):
                key = self.own_key(c, i)
                ws = self._versions(key)
                acked = [ver for ver, o in ws.items() if o.outcome == "ok"]
                last = max(acked, default=0)
                self._check_state(v, key, c, ws, last, self.final.get(key),
                                  "final state", None)
        # Reads: against the writes acknowledged before each read was sent.
        by_key = {}
        for o in self.ops:
            if o.kind == "get" and o.outcome == "ok" and o.keys[0] not in self.counter_incrs:
                by_key.setdefault(o.keys[0], []).append(o)
        for key, reads in by_key.items():
            ws = self._versions(key)
            owner = int(key.rsplit(":w", 1)[1].split(":")[0])
            acked = sorted((o.done, ver) for ver, o in ws.items() if o.outcome == "ok")
            reads.sort(key=lambda o: o.invoke)
            j, last = 0, 0
            for r in reads:
                while j < len(acked) and acked[j][0] < r.invoke:
                    last = max(last, acked[j][1])
                    j += 1
                n["reads_checked"] += 1
                self._check_state(v, key, owner, ws, last, r.result, "GET", r)

    def _check_state(self, v, key, owner, ws, last, value, what, read):
        """value (bytes or None) must be version >= last of key, sent (and,
        for a read, sent before the read returned)."""
        at = f" (read sent {read.invoke:.3f}, answered {read.done:.3f} by {read.host})" if read else ""
        if value is None:
            dels = [ver for ver, o in ws.items() if o.kind == "del" and ver >= last
                    and o.outcome != "error" and (read is None or o.invoke <= read.done)]
            if last > 0 and not dels:
                v.append(f"{self.name}: {what} of {key} is nil{at}, but version {last} "
                         f"({ws[last].kind}, acknowledged {ws[last].done:.3f}) was acknowledged"
                         " before and no DEL after it was sent")
            return
        text = value.decode(errors="replace")
        try:
            conn, ver = (int(x) for x in text.split(":"))
        except ValueError:
            v.append(f"{self.name}: {what} of {key} is {text!r}{at}, never written")
            return
        o = ws.get(ver)
        if conn != owner or o is None or o.kind == "del" or o.outcome == "error":
            v.append(f"{self.name}: {what} of {key} is {text!r}{at}: no such write was sent"
                     " (or it was refused)")
            return
        if read is not None and o.invoke > read.done:
            v.append(f"{self.name}: {what} of {key} is {text!r}{at}, a write sent only at "
                     f"{o.invoke:.3f}")
            return
        if ver < last:
            lo = ws[last]
            v.append(f"{self.name}: {what} of {key} is version {ver}{at}, older than version "
                     f"{last} ({lo.kind}, sent {lo.invoke:.3f}, acknowledged {lo.done:.3f} by "
                     f"{lo.host})" + (": an acknowledged write was lost" if read is None
                                      else ": a stale read"))

    def _check_counters(self, v, n):
        reads = {}
        for o in self.ops:
            if o.kind == "get" and o.outcome == "ok" and o.keys[0] in self.counter_incrs:
                reads.setdefault(o.keys[0], []).append(o)
        for key, incrs in self.counter_incrs.items():
            acked = [o for o in incrs if o.outcome == "ok"]
            n["incrs_acked"] += len(acked)
            sent = sum(1 for o in incrs if o.outcome != "error")
            top = max((o.result for o in acked), default=0)
            seen = {}
            for o in acked:
                if o.result in seen:
                    p = seen[o.result]
                    v.append(f"{self.name}: two INCRs of {key} were acknowledged with {o.result}"
                             f" (answered {p.done:.3f} by {p.host} and {o.done:.3f} by "
                             f"{o.host}): an increment was lost")
                seen[o.result] = o
                if o.result > sent:
                    v.append(f"{self.name}: INCR of {key} answered {o.result}, but only "
                             f"{sent} INCRs were sent")
            # never backwards: sweep in invoke order over acks done before it
            done_sorted = sorted(acked, key=lambda o: o.done)
            order = sorted(acked, key=lambda o: o.invoke)
            j, best, best_op = 0, 0, None
            for o in order:
                while j < len(done_sorted) and done_sorted[j].done < o.invoke:
                    if done_sorted[j].result > best:
                        best, best_op = done_sorted[j].result, done_sorted[j]
                    j += 1
                if o.result <= best:
                    v.append(f"{self.name}: counter {key} went backwards: INCR sent "
                             f"{o.invoke:.3f} answered {o.result} by {o.host}, after an INCR "
                             f"acknowledged {best} at {best_op.done:.3f} by {best_op.host}")
            rs = sorted(reads.get(key, []), key=lambda o: o.invoke)
            j, best = 0, 0
            for r in rs:
                while j < len(done_sorted) and done_sorted[j].done < r.invoke:
                    best = max(best, done_sorted[j].result)
                    j += 1
                n["reads_checked"] += 1
                got = int(r.result) if r.result is not None else 0
                if got < best:
                    v.append(f"{self.name}: GET of counter {key} read {got} (sent {r.invoke:.3f}"
                             f", by {r.host}) after an INCR acknowledged {best}: a stale read")
            final = self.final.get(key)
            fv = int(final) if final is not None else 0
            if fv < top:
                v.append(f"{self.name}: counter {key} is {fv} at the end, but an INCR was "
                         f"acknowledged with {top}: an acknowledged write was lost")
            if fv > sent:
                v.append(f"{self.name}: counter {key} is {fv} at the end, but only {sent} "
                         "INCRs were sent")

    def _check_owners(self, v):
        """No host answers a command sent after another host had already
        answered for this incarnation (hosts are only ever left, never
        returned to: an instance moves once, to the spare host)."""
        if len(self.first_reply) < 2:
            return
        order = sorted(self.first_reply.items(), key=lambda kv: kv[1])
        for i, (host, t) in enumerate(order[:-1]):
            successor, t_next = order[i + 1]
            late = [o for o in self.ops if o.host == host and o.done is not None
                    and o.outcome in ("ok", "error") and o.invoke > t_next]
            if late:
                o = late[0]
                v.append(f"{self.name}: double owner: {host} answered {len(late)} command(s) "
                         f"sent after {successor} had answered (first: {o.kind} {o.keys} sent "
                         f"{o.invoke:.3f}, answered {o.done:.3f}; {successor} first answered "
                         f"{t_next:.3f})")
