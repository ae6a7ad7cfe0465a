"""benchlib — shared helpers for spare's benchmark scripts (Python 3 stdlib only).

What is here:
  * locating the build (BUILD/bin/spare, spare-kv, commit_bench);
  * machine facts recorded with every result (nproc, kernel, CPU, load);
  * an `Agent` context manager that starts `spare agent --dir DIR`, runs
    instances with `spare run`, reads `spare status --json`, and cleans up
    only the processes it started (by pid);
  * a minimal RESP client (enough for PING, DBSIZE, DEBUG POPULATE);
  * order statistics (median, p99 by linear interpolation) and tables.

Every benchmark script prints a human table and one JSON object (its
summary), and can also write that JSON to a file (--out).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUILD = REPO / "build-bench"


class BenchError(RuntimeError):
    """A benchmark could not produce a valid figure. Always fatal."""


def fail(msg: str) -> None:
    raise BenchError(msg)


# ---------------------------------------------------------------- build ----

def binary(build: Path, name: str) -> Path:
    path = Path(build) / "bin" / name
    if not path.is_file() or not os.access(path, os.X_OK):
        fail(f"{path} not found or not executable; build with: "
             f"cmake -S {REPO} -B {build} -G Ninja -DCMAKE_BUILD_TYPE=Release "
             f"&& ninja -C {build}")
    return path


def git_rev() -> str:
    if os.environ.get("SPARE_BENCH_GIT"):  # set by run_all.sh for a HEAD snapshot build
        return os.environ["SPARE_BENCH_GIT"]
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -------------------------------------------------------- machine facts ----

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1024 * 1024), 1)
    except OSError:
        pass
    return 0.0


def machine_facts(**extra) -> dict:
    """Facts that make a figure interpretable. `extra` adds bench-specific ones."""
    facts = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "mem_gib": _mem_total_gib(),
        "loadavg_at_start": list(os.getloadavg()),
        "git": git_rev(),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "UCX_TLS": os.environ.get("UCX_TLS", "(unset)"),
    }
    facts.update(extra)
    return facts


def fs_type(path) -> str:
    """Filesystem type holding `path` (longest mount-point prefix in /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def command_line() -> str:
    """The exact command that produced a result, for the docs."""
    import shlex
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix()] + sys.argv[1:])


# --------------------------------------------------------------- stats ----

def parse_size(text: str) -> int:
    """'64M', '1GiB', '4096' -> bytes (K, M, G, T are powers of 1024)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after timeout; waits for the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values, p: float) -> float:
    """p in [0, 100], linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def summarize(values) -> dict:
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "min": min(vals),
        "p50": percentile(vals, 50),
        "p99": percentile(vals, 99),
        "max": max(vals),
        "mean": sum(vals) / len(vals),
    }


def table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for i, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:  # nan
            return "-"
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.3f}"
    return str(c)


def wait_quiet(max_load: float, max_wait_s: float) -> dict:
    """Waits (up to max_wait_s) until the 1-minute load average is below
    max_load; this machine is shared. Returns what was seen, for the record."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(5)
    load = os.getloadavg()[0]
    res = {"max_load": max_load, "waited_s": round(time.monotonic() - t0), "load1": load,
           "quiet": load < max_load}
    if not res["quiet"]:
        print(f"# machine still busy after {max_wait_s:.0f} s (load {load:.1f}); measuring anyway",
              file=sys.stderr)
    return res


def add_quiet_args(ap) -> None:
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="LOAD",
                    help="first wait until the 1-min load average is below LOAD (0: don't)")
    ap.add_argument("--wait-quiet-max-s", type=float, default=900)


def emit(summary: dict, human: str, out: str | None) -> None:
    """Prints the human table, then the JSON summary (last line block)."""
    if "machine" in summary:
        summary["machine"]["loadavg_at_end"] = list(os.getloadavg())
    print(human)
    print()
    text = json.dumps(summary, indent=2, sort_keys=False)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
        print(f"# written to {out}", file=sys.stderr)


# ---------------------------------------------------------------- RESP ----

class Resp:
    """A blocking RESP2 client on one TCP connection."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def encode(*args) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(parts)

    def command(self, *args, timeout: float | None = None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.sendall(self.encode(*args))
        return self._reply()

    def pipeline(self, commands) -> list:
        """Sends every command, then reads every reply (errors as RespError values)."""
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        out = []
        for _ in commands:
            try:
                out.append(self._reply())
            except RespError as e:
                out.append(e)
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError(f"bad RESP reply line {line!r}")


class RespError(Exception):
    pass


PING = b"*1\r\n$4\r\nPING\r\n"


def ping_once(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(PING)
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_pong(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping_once(port):
            return
        if proc is not None and proc.poll() is not None:
            fail(f"server on port {port} exited with {proc.returncode} before answering PING")
        time.sleep(0.01)
    fail(f"no PONG on port {port} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------- agent ----

def kill_by_agent_env(prefix: str) -> None:
    """SIGKILL every process whose SPARE_AGENT starts with `prefix` (the
    instances an agent under a bench's directory launched; they outlive it)."""
    needle = f"SPARE_AGENT={prefix}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if needle in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def proc_rss_kib(pid: int) -> dict:
    """RSS split of a process (KiB): anon = private copies, shmem = mapped memfd pages."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class Agent:
    """`spare agent --dir DIR` for the duration of a `with` block.

    Everything it starts is stopped on exit, by id or pid, never by name.
    """

    def __init__(self, build: Path, env: dict | None = None, keep_dir: bool = False,
                 dir_prefix: str = "spare-bench-", base: str | None = None,
                 args: list[str] | None = None):
        self.build = Path(build)
        self.args = list(args or [])  # more `spare agent` flags, e.g. --standby H:P
        self.spare = binary(build, "spare")
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        # The agent directory holds state.json, which the agent fsyncs on
        # every state change (restarts included): its filesystem matters.
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix, dir=base))
        self.dir_fs = fs_type(self.dir)
        self.keep_dir = keep_dir
        self.proc: subprocess.Popen | None = None
        self.argv0: dict[str, str] = {}
        self.ids: list[str] = []
        self.seen_pids: dict[int, str] = {}  # pid -> argv[0] basename it ran

    def __enter__(self):
        log = open(self.dir / "agent.log", "wb")
        self.proc = subprocess.Popen([str(self.spare), "agent", "--dir", str(self.dir), *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        sock = self.dir / "agent.sock"
        deadline = time.monotonic() + 15
        while not sock.exists():
            if self.proc.poll() is not None:
                fail(f"spare agent exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                fail(f"spare agent: no {sock} after 15 s; log:\n{self.log_tail()}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.close()

    def log_tail(self, n: int = 40, path: Path | None = None) -> str:
        try:
            lines = (path or self.dir / "agent.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def instance_log(self, id_: str, n: int = 40) -> str:
        return self.log_tail(n, self.dir / "instances" / id_ / "log")

    def cli(self, *args, check: bool = True, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
        e = dict(self.env)
        if env:
            e.update(env)
        cp = subprocess.run([str(self.spare), *args], capture_output=True, text=True,
                            timeout=timeout, env=e)
        if check and cp.returncode != 0:
            fail(f"`spare {' '.join(args)}` failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}"
                 f"\nagent log:\n{self.log_tail()}")
        return cp

    def run(self, id_: str, argv: list[str], policy: str = "local",
            run_args: list[str] | None = None, env: dict | None = None,
            timeout: float = 120) -> dict:
        """`spare run`; returns the instance's status entry once attached."""
        self.ids.append(id_)
        self.argv0[id_] = Path(argv[0]).name
        self.cli("run", "--agent", str(self.dir), "--id", id_, "--policy", policy,
                 *(run_args or []), "--", *argv, env=env, timeout=timeout)
        inst = self.instance(id_)
        if inst is None:
            fail(f"`spare run` returned but `spare status` does not list {id_}")
        return inst

    def status(self) -> dict:
        cp = self.cli("status", "--agent", str(self.dir), "--json", timeout=30)
        try:
            return json.loads(cp.stdout)
        except json.JSONDecodeError as e:
            fail(f"`spare status --json` printed invalid JSON ({e}):\n{cp.stdout[:2000]}")

    def instance(self, id_: str) -> dict | None:
        for inst in self.status().get("instances", []):
            if inst.get("id") == id_:
                if inst.get("pid") and id_ in self.argv0:
                    self.seen_pids[int(inst["pid"])] = self.argv0[id_]
                return inst
        return None

    def wait_state(self, id_: str, states, timeout: float, poll_s: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        inst = None
        while time.monotonic() < deadline:
            inst = self.instance(id_)
            if inst is not None and inst.get("state") in states:
                return inst
            time.sleep(poll_s)
        fail(f"instance {id_} not in {states} after {timeout:.0f} s (last: {inst})"
             f"\ninstance log:\n{self.instance_log(id_)}")

    def stop(self, id_: str) -> None:
        self.cli("stop", "--agent", str(self.dir), "--id", id_, check=False, timeout=30)

    def close(self) -> None:
        for id_ in self.ids:
            try:
                self.stop(id_)
            except Exception:  # best effort during cleanup
                pass
        if self.proc is not None:
            terminate(self.proc)
        # Instances we saw and that outlived the agent: end them by pid.
        for pid, name in self.seen_pids.items():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                if Path(cmd.decode(errors="replace")).name == name:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
