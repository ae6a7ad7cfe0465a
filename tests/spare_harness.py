"""Shared helpers for spare's system tests (Python 3 stdlib only).

A Harness owns one temporary directory and every process a test starts in
it: the agent (`spare agent --dir D`), the instances the agent launches
(they carry SPARE_AGENT=D in their environment) and the helper clients the
test spawns. close() kills all of them, found by that directory, even when
the test failed or timed out, so no test leaves a process behind.

    class MyTest(unittest.TestCase):
        def setUp(self):
            self.h = Harness(self)          # registers its own cleanup
        def test_x(self):
            self.h.start_agent()
            port = free_port()
            self.h.run("kv", [SPARE_KV, "--port", str(port)])
            self.h.wait_pong(port)

Binaries come from $SPARE_BIN (set by CTest), else build/bin of the repo.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SPARE_BIN") or os.path.join(REPO, "build", "bin")
SPARE = os.path.join(BIN, "spare")
SPARE_KV = os.path.join(BIN, "spare-kv")
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "redis-benchmark"

# CTest's TIMEOUT covers the whole file: the deadline counts from import.
_DEADLINE = (time.monotonic() + int(os.environ["SPARE_DEADLINE"])
             if os.environ.get("SPARE_DEADLINE") else None)
_STARTED = re.compile(r"started (\S+) pid (\d+) generation (\d+)")


class TestTimeout(Exception):
    """Raised in the main thread when a harness deadline passes."""


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis(port, *args, timeout=10, stdin=None, host="127.0.0.1"):
    """Runs `redis-cli -p PORT ARGS...`; returns (exit code, stdout stripped).

    Without a terminal redis-cli prints raw replies: OK, integers, values,
    error text (still exit 0), one array element per line, an empty line for
    nil. stdin (a str) feeds one command per line when ARGS is empty; then
    stdout comes back unstripped: each reply ends with a newline.
    """
    try:
        p = subprocess.run([REDIS_CLI, "-h", host, "-p", str(port), *args], input=stdin,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, ""
    return p.returncode, p.stdout if stdin else p.stdout.strip()


def mget(port, keys, chunk=1000):
    """Values of keys (None when absent), via one redis-cli fed on stdin."""
    lines = []
    for i in range(0, len(keys), chunk):
        lines.append("MGET " + " ".join(keys[i:i + chunk]))
    rc, out = redis(port, stdin="\n".join(lines) + "\n", timeout=60)
    values = out.split("\n")[:-1]  # one line per key, then the final newline
    if rc != 0 or len(values) != len(keys):
        raise AssertionError(f"MGET of {len(keys)} keys returned {len(values)} lines (exit {rc}):"
                             f" {out[:200]!r}")
    return [v if v != "" else None for v in values]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_stat(pid):
    """(comm, state, ppid) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, fields[0], int(fields[1])


def children(ppid):
    """[(pid, comm, state)] of the processes whose parent is ppid."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[2] == ppid:
                out.append((int(entry), st[0], st[1]))
    return out


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Harness:
    """One test's directory, agent and processes. See the module docstring."""

    def __init__(self, test, name=None):
        name = name or test.id().rsplit(".", 1)[-1]
        self.dir = tempfile.mkdtemp(prefix=f"spare-{name}-")
        self.agent_proc = None
        self.procs = []
        self._logs = []
        test.addCleanup(self.close)
        if _DEADLINE:  # fail cleanly (and clean up) before CTest kills us
            def on_alarm(signum, frame):
                raise TestTimeout("harness deadline (SPARE_DEADLINE) passed")
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(max(1, int(_DEADLINE - time.monotonic())))

    # --- processes -------------------------------------------------------

    def popen(self, args, log=None, **kw):
        """Starts a tracked helper process in its own process group."""
        out = open(log or os.path.join(self.dir, f"proc{len(self.procs)}.log"), "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, **kw)
        out.close()
        self.procs.append(p)
        return p

    def spare(self, *args, timeout=30, env=None):
        """Runs `spare ARGS...` to completion; returns the CompletedProcess."""
        return subprocess.run([SPARE, *args], capture_output=True, text=True, timeout=timeout,
                              env=env)

    def start_agent(self, extra=(), timeout=10, wrap=()):
        """Starts `spare agent --dir DIR` and waits until it answers status.
        `wrap` prefixes the command (netns.Hosts.wrap: run it on a host)."""
        log = os.path.join(self.dir, "agent.log")
        if log not in self._logs:
            self._logs.append(log)
        self.agent_proc = self.popen([*wrap, SPARE, "agent", "--dir", self.dir, *extra], log=log)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.agent_proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.agent_proc.returncode}:\n"
                                     + tail(log))
            if os.path.exists(os.path.join(self.dir, "agent.sock")):
                if self.spare("status", "--agent", self.dir, "--json", timeout=5).returncode == 0:
                    return self.agent_proc
            time.sleep(0.02)
        raise AssertionError(f"agent did not answer status within {timeout} s:\n" + tail(log))

    def kill_agent(self):
        """kill -9 of the agent; waits until it is gone."""
        self.agent_proc.kill()
        self.agent_proc.wait(timeout=10)

    def run(self, instance_id, argv, policy="local", extra=(), env=None, timeout=30):
        """`spare run`; returns (pid, generation). Fails the test if it fails."""
        p = self.spare("run", "--agent", self.dir, "--id", instance_id, "--policy", policy,
                       *extra, "--", *argv, timeout=timeout, env=env)
        m = _STARTED.search(p.stdout)
        if p.returncode != 0 or not m or m.group(1) != instance_id:
            raise AssertionError(f"spare run failed (exit {p.returncode}):\n{p.stdout}{p.stderr}"
                                 f"\ninstance log:\n{self.instance_log(instance_id)}")
        return int(m.group(2)), int(m.group(3))

    def stop(self, instance_id):
        return self.spare("stop", "--agent", self.dir, "--id", instance_id)

    # --- state -----------------------------------------------------------

    def status(self):
        p = self.spare("status", "--agent", self.dir, "--json", timeout=10)
        if p.returncode != 0:
            raise AssertionError(f"spare status failed (exit {p.returncode}): {p.stderr}")
        return json.loads(p.stdout)

    def instance(self, instance_id):
        for inst in self.status()["instances"]:
            if inst["id"] == instance_id:
                return inst
        raise AssertionError(f"no instance {instance_id} in spare status")

    def wait_instance(self, instance_id, pred, timeout=10, what="condition"):
        """Polls status until pred(instance) holds; returns the instance."""
        end = time.monotonic() + timeout
        while True:
            inst = self.instance(instance_id)
            if pred(inst):
                return inst
            if time.monotonic() > end:
                raise AssertionError(f"instance {instance_id}: {what} not reached in {timeout} s;"
                                     f" last status {json.dumps(inst)}")
            time.sleep(0.005)

    def instance_log(self, instance_id):
        return tail(os.path.join(self.dir, "instances", instance_id, "log"))

    def wait_pong(self, port, timeout=10, host="127.0.0.1"):
        """Polls `redis-cli PING` until PONG; returns the seconds it took."""
        start = time.monotonic()
        while True:
            rc, out = redis(port, "PING", timeout=2, host=host)
            if rc == 0 and out == "PONG":
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no PONG on port {port} within {timeout} s (last: {out!r})")
            time.sleep(0.002)

    # --- teardown --------------------------------------------------------

    def _ours(self):
        """Pids of processes tied to our directory (agent, instances)."""
        pids = set()
        marker = self.dir.encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"SPARE_AGENT=" + marker in env or marker in cmd:
                pids.add(int(entry))
        return pids

    def close(self):
        signal.alarm(0)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(50):  # instances re-spawned while we kill are caught next round
            pids = self._ours()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        else:
            print(f"harness: processes survived teardown: {sorted(self._ours())}", file=sys.stderr)
        # Shown by ctest --output-on-failure only when the test failed.
        for log in self._logs:
            print(f"--- {log} (tail)\n{tail(log)}", file=sys.stderr)
        inst_root = os.path.join(self.dir, "instances")
        if os.path.isdir(inst_root):
            for iid in sorted(os.listdir(inst_root)):
                print(f"--- instance {iid} log (tail)\n{self.instance_log(iid)}", file=sys.stderr)
        if os.environ.get("SPARE_KEEP_TMP"):
            print(f"harness: kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
