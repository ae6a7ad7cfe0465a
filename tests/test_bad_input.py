"""Malformed input never changes state or takes a server down.

spare-kv: a raw socket sends broken RESP (bad bulk length, garbage type
byte, negative and huge counts, random bytes); each gets an error reply (or
the connection is closed), the store is unchanged and other clients are
served meanwhile. The agent: broken frames on its control socket (bad magic,
bad checksum, lying lengths, bodies of the wrong shape) are refused with an
Error frame naming the problem; the agent and its instance carry on.
"""

import json
import os
import random
import socket
import struct
import time
import unittest

from spare_harness import SPARE_KV, Harness, free_port, mget, redis

M = (1 << 64) - 1
P1, P2, P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
P4, P5 = 9650029242287828579, 2870177450012600261


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def _round(acc, lane):
    return _rotl((acc + lane * P2) & M, 31) * P1 & M


def xxh64(data, seed=0):
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], int.from_bytes(data[i + 8 * j:i + 8 * j + 8], "little"))
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M
        for x in v:
            h = ((h ^ _round(0, x)) * P1 + P4) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, int.from_bytes(data[i:i + 8], "little")), 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ (int.from_bytes(data[i:i + 4], "little") * P1 & M), 23) * P2 + P3) & M
        i += 4
    while i < n:
        h = _rotl(h ^ (data[i] * P5 & M), 11) * P1 & M
        i += 1
    h = (h ^ (h >> 33)) * P2 & M
    h = (h ^ (h >> 29)) * P3 & M
    return h ^ (h >> 32)


HEADER = struct.Struct("<IHHIIQQ")  # docs/WIRE.md §1
MAGIC, VERSION = 0x45525053, 2
T_OK, T_ERROR, T_COMMIT, T_RUN, T_STATUS, T_STOP = 1, 2, 12, 20, 21, 22


def frame(msg_type, body, blob=b"", magic=MAGIC, version=VERSION, json_len=None, checksum=None):
    """A control frame; the keyword arguments forge individual fields."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = HEADER.pack(magic, version, msg_type, len(data) if json_len is None else json_len,
                       len(blob), 0, 0)
    if checksum is None:
        checksum = xxh64(head[:24] + data + blob)
    return head[:24] + struct.pack("<Q", checksum) + data + blob


def agent_exchange(agent_dir, packet):
    """Sends one packet; returns (type, body) of the reply, or None if closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(os.path.join(agent_dir, "agent.sock"))
        s.send(packet)
        try:
            reply = s.recv(1 << 20)
        except (ConnectionResetError, socket.timeout):
            return None
    if not reply:
        return None
    magic, version, msg_type, json_len, blob_len, _, checksum = HEADER.unpack_from(reply)
    assert (magic, version) == (MAGIC, VERSION), f"reply has a bad header: {reply[:32]!r}"
    assert len(reply) == 32 + json_len + blob_len, "reply length mismatch"
    assert checksum == xxh64(reply[:24] + reply[32:]), "reply checksum mismatch"
    return msg_type, json.loads(reply[32:32 + json_len])


def resp_exchange(port, payload, wait=2.0):
    """Sends raw bytes to spare-kv; returns what came back before close/timeout."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(payload)
        try:
            while not got.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
    return got


class BadInputTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.start_agent()
        self.port = free_port()
        self.pid, _ = self.h.run("kv", [SPARE_KV, "--port", str(self.port)])
        self.h.wait_pong(self.port)
        self.data = {f"k{i}": f"v{i}" for i in range(100)}
        for k, v in self.data.items():
            self.assertEqual(redis(self.port, "SET", k, v), (0, "OK"))

    def assert_store_intact(self):
        keys = sorted(self.data)
        self.assertEqual(dict(zip(keys, mget(self.port, keys))), self.data)
        self.assertEqual(redis(self.port, "DBSIZE"), (0, str(len(self.data))))

    def test_malformed_resp(self):
        cases = {
            "bad bulk length": b"*1\r\n$abc\r\nPING\r\n",
            "garbage type byte": b"*2\r\n%3\r\nSET\r\n",
            "garbage count": b"*x\r\n$4\r\nPING\r\n",
            "negative count": b"*-5\r\n$4\r\nPING\r\n",
            "negative bulk length": b"*3\r\n$3\r\nSET\r\n$-7\r\nk1\r\n$1\r\nz\r\n",
            "huge count": b"*99999999999999\r\n$4\r\nPING\r\n",
            "huge bulk length": b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$999999999999\r\nz\r\n",
            "overflowing count": b"*184467440737095516160\r\n",
            "binary garbage": b"*" + random.Random(7).randbytes(4096) + b"\r\n",
            "overlong line": b"*" + b"1" * 200000,
            "overlong inline command": b"PING" + b"A" * 200000,
        }
        # A client stuck in the middle of a command must not stall others.
        stuck = socket.create_connection(("127.0.0.1", self.port))
        stuck.sendall(b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$100\r\nabc")
        try:
            for name, payload in cases.items():
                with self.subTest(name):
                    reply = resp_exchange(self.port, payload)
                    self.assertTrue(reply.startswith(b"-"), f"{name}: no error reply: {reply!r}")
                    self.assertEqual(redis(self.port, "PING", timeout=5), (0, "PONG"), name)
                    self.assert_store_intact()
        finally:
            stuck.close()
        # Well-formed but wrong commands are errors too, and change nothing.
        for args in (["SET", "k1"], ["INCR", "k1"], ["NOSUCHCOMMAND"], ["GET"]):
            rc, out = redis(self.port, *args)
            self.assertIn("ERR", out, args)
        self.assert_store_intact()

    def test_garbage_on_agent_socket(self):
        d = self.h.dir
        ok = agent_exchange(d, frame(T_STATUS, {}))
        self.assertIsNotNone(ok)
        self.assertEqual(ok[0], T_OK, f"a well-formed Status was refused: {ok}")
        refused = {
            "bad magic": (frame(T_STATUS, {}, magic=0xDEADBEEF), None),
            "bad version": (frame(T_STATUS, {}, version=9), "version"),
            "bad checksum": (frame(T_STATUS, {}, checksum=12345), "checksum"),
            "json_len lies": (frame(T_STATUS, {}, json_len=60000), None),
            "unknown type": (frame(999, {}), "type"),
            "body not an object": (frame(T_STATUS, [1, 2]), None),
            "body not json": (frame(T_STATUS, b"{nope"), None),
            "run without argv": (frame(T_RUN, {"id": "x", "policy": "local"}), "argv"),
            "run with bad argv": (frame(T_RUN, {"id": "x", "policy": "local", "argv": 5}), "argv"),
            "stop unknown id": (frame(T_STOP, {"id": "nosuch"}), "nosuch"),
            "commit from a stranger": (frame(T_COMMIT, {"epoch": 1, "first_slot": 0,
                                                         "parts": 1}), None),
        }
        for name, (packet, needle) in refused.items():
            with self.subTest(name):
                reply = agent_exchange(d, packet)
                self.assertIsNotNone(reply, f"{name}: the agent closed without an Error frame")
                msg_type, body = reply
                self.assertEqual(msg_type, T_ERROR, f"{name}: {body}")
                self.assertIn("code", body)
                if needle:
                    self.assertIn(needle, body.get("message", "").lower(), f"{name}: {body}")
        for name, packet in {"empty": b"", "short": b"SPRE", "random": os.urandom(3000)}.items():
            with self.subTest(name):
                agent_exchange(d, packet)  # an Error or a close: both fine
        # Half-open connections and abrupt closes do not hurt either.
        socks = []
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(os.path.join(d, "agent.sock"))
            socks.append(s)
        for s in socks:
            s.close()
        time.sleep(0.2)
        self.assertIsNone(self.h.agent_proc.poll(), "the agent died")
        inst = self.h.instance("kv")
        self.assertEqual((inst["state"], inst["pid"], inst["restarts"]), ("running", self.pid, 0))
        self.assertEqual(redis(self.port, "SET", "after", "1"), (0, "OK"))
        self.data["after"] = "1"
        self.assert_store_intact()


if __name__ == "__main__":
    unittest.main()
