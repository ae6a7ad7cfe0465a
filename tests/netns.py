"""Simulated hosts for system tests: network namespaces joined by veth pairs.

    hosts = Hosts(test, ["pri", "spr"])   # removed again by test cleanup
    hosts.wrap("spr")                     # ["ip", "netns", "exec", NS]: prefix a command
    hosts.client_ip("pri")                # where the test (root namespace) reaches it
    hosts.peer_ip("spr")                  # its address on the hosts' own link

Topology, for hosts h1..hN (N >= 2):
- a link between the hosts: each host's end is named `spare0` (so one
  UCX_NET_DEVICES=spare0 pins UCX to it on every host), the hosts'
  addresses 10.A.0.i/24: one veth pair for two hosts, a bridge in a
  namespace of its own (a switch) for more;
- a client link from the root namespace to each host: veth `cli0` in the
  host (10.A.i.2/24), its root-namespace end 10.A.i.1/24 — the test's
  clients talk to the instances over it, as clients on the network would;
- `lo` up in each host.
A is picked from the test's pid so concurrent tests do not collide; every
interface and namespace name carries the same tag. Nothing leaves these
namespaces and links. Requires root (CI runs as root).
"""

import os
import subprocess
import time


def _ip(*args, check=True):
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
    return p


class Hosts:
    def __init__(self, test, names):
        if len(names) < 2:
            raise ValueError("Hosts needs at least two hosts")
        self.tag = f"{os.getpid() % 100000}"
        self.a = 16 + os.getpid() % 200
        self.names = list(names)
        self.ns = {n: f"sp{self.tag}{n}" for n in self.names}
        self._root_links = []
        test.addCleanup(self.close)
        try:
            self._build()
            self._wait_ready()
        except Exception:
            self.close()
            raise

    def _build(self):
        for i, n in enumerate(self.names, start=1):
            ns = self.ns[n]
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            root_end = f"sp{self.tag}c{i}"
            _ip("link", "add", root_end, "type", "veth", "peer", "name", "cli0", "netns", ns)
            self._root_links.append(root_end)
            _ip("addr", "add", f"10.{self.a}.{i}.1/24", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("-n", ns, "addr", "add", f"10.{self.a}.{i}.2/24", "dev", "cli0")
            _ip("-n", ns, "link", "set", "cli0", "up")
        first = self.ns[self.names[0]]
        if len(self.names) == 2:
            _ip("-n", first, "link", "add", "spare0", "type", "veth", "peer", "name", "spare0",
                "netns", self.ns[self.names[1]])
            for i, n in enumerate(self.names, start=1):
                self._up_host_link(self.ns[n], i)
            return
        # More hosts: a switch (a bridge in a namespace of its own) and each
        # host's spare0 plugged into it.
        sw = self.ns["switch"] = f"sp{self.tag}sw"
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "add", "spbr0", "type", "bridge")
        _ip("-n", sw, "link", "set", "spbr0", "up")
        for i, n in enumerate(self.names, start=1):
            _ip("-n", sw, "link", "add", f"port{i}", "type", "veth", "peer", "name", "spare0",
                "netns", self.ns[n])
            _ip("-n", sw, "link", "set", f"port{i}", "master", "spbr0")
            _ip("-n", sw, "link", "set", f"port{i}", "up")
            self._up_host_link(self.ns[n], i)

    def _wait_ready(self, timeout=10):
        """Until every link has carrier and each host reaches the others."""
        end = time.monotonic() + timeout
        for n in self.names:
            while True:
                out = _ip("-n", self.ns[n], "-o", "link", "show").stdout
                links = [l for l in out.splitlines() if " cli0" in l or " spare0" in l]
                if len(links) == 2 and all("NO-CARRIER" not in l and "LOWER_UP" in l
                                           for l in links):
                    break
                if time.monotonic() > end:
                    raise AssertionError(f"host {n}: links not up in {timeout} s:\n{out}")
                time.sleep(0.02)
        for n in self.names:
            for m in self.names:
                if m == n:
                    continue
                while subprocess.run([*self.wrap(n), "ping", "-c", "1", "-W", "1", "-q",
                                      self.peer_ip(m)], capture_output=True).returncode != 0:
                    if time.monotonic() > end:
                        raise AssertionError(f"host {n} cannot reach {m} ({self.peer_ip(m)})")
                    time.sleep(0.05)

    def _up_host_link(self, ns, i):
        _ip("-n", ns, "addr", "add", f"10.{self.a}.0.{i}/24", "dev", "spare0")
        _ip("-n", ns, "link", "set", "spare0", "up")

    def wrap(self, name):
        return ["ip", "netns", "exec", self.ns[name]]

    def client_ip(self, name):
        return f"10.{self.a}.{self.names.index(name) + 1}.2"

    def peer_ip(self, name):
        return f"10.{self.a}.0.{self.names.index(name) + 1}"

    def host_link(self, name):
        """The host's end of the hosts' link, for cutting it (ip link set down)."""
        return "spare0"

    def close(self):
        for ns in self.ns.values():
            _ip("netns", "del", ns, check=False)
        for link in self._root_links:  # gone with their peers; make sure
            _ip("link", "del", link, check=False)
        self._root_links = []
