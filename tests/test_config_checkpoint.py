"""Configuration checkpoints (seed 002) across real kill -9 restarts.

spare-kv runs under the real agent with a --config file and a --users file.
Each is a checkpoint key ("config", "users") fingerprinted by the file's
bytes. First start: both missing, parsed and saved. kill -9: both hits
(parsing skipped), and AUTH still follows the users file. Editing the users
file then kill -9: only "users" is stale (re-parsed: the new password
works, the old one is refused); "config" is still a hit. A malformed config
file is refused with an error naming file, line and directive, both
without an agent and when a restart finds it.
"""

import os
import re
import subprocess
import time
import unittest

from spare_harness import REDIS_CLI, SPARE_KV, Harness, free_port, redis

NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


ERROR_REPLY = re.compile(r"^(ERR|NOAUTH|WRONGPASS|OOM) ")


def session(port, *commands):
    """Runs the commands on one connection; returns one reply line each.

    Fed on stdin, redis-cli prints an empty line after each error reply;
    those are dropped (no value in these tests looks like an error).
    """
    rc, out = redis(port, stdin="".join(c + "\n" for c in commands))
    raw = out.split("\n")[:-1]
    lines, i = [], 0
    while i < len(raw):
        lines.append(raw[i])
        i += 2 if ERROR_REPLY.match(raw[i]) and i + 1 < len(raw) and raw[i + 1] == "" else 1
    if rc != 0 or len(lines) != len(commands):
        raise AssertionError(f"redis-cli {commands!r}: exit {rc}, output {out!r}")
    return lines


def info(port, user, password, section="checkpoint"):
    """INFO section as a dict, over an authenticated connection."""
    rc, out = redis(port, "--no-auth-warning", "--user", user, "--pass", password, "INFO", section)
    if rc != 0 or not out.startswith("#"):
        raise AssertionError(f"INFO {section}: exit {rc}, output {out!r}")
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


class ConfigCheckpointTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.conf = os.path.join(self.h.dir, "kv.conf")
        self.users = os.path.join(self.h.dir, "users.acl")

    def wait_up(self, port, timeout=15):
        """Until the server answers; with a users file PING says NOAUTH."""
        end = time.monotonic() + timeout
        while True:
            rc, out = redis(port, "PING", timeout=2)
            if rc == 0 and out in (NOAUTH, "PONG"):
                return out
            if time.monotonic() > end:
                raise AssertionError(f"port {port} not answering in {timeout} s (last {out!r})")
            time.sleep(0.01)

    def config_get(self, port, password, *patterns):
        """CONFIG GET as a dict, authenticated as the default user."""
        rc, out = redis(port, "--no-auth-warning", "-a", password, "CONFIG", "GET", *patterns)
        lines = out.splitlines()
        self.assertEqual(rc, 0, out)
        return dict(zip(lines[::2], lines[1::2]))

    def kill9_and_wait(self, pid):
        os.kill(pid, 9)
        inst = self.h.wait_instance("kv", lambda i: i["state"] == "running" and i["pid"] != pid,
                                    timeout=15, what="restarted after kill -9")
        return inst["pid"]

    def assert_checkpoint(self, port, password, config, users, saved):
        ck = info(port, "alice", password)
        self.assertEqual((ck["config_state"], ck["users_state"]), (config, users), ck)
        self.assertEqual((ck["config_saved"], ck["users_saved"]), saved, ck)
        self.assertEqual(ck["config_file"], self.conf)
        self.assertEqual(ck["checkpoint_keys"], "config,users")
        print(f"config {config} in {ck['config_load_us']} us, users {users} in"
              f" {ck['users_load_us']} us")
        states = [config, users]
        for name in ("hit", "stale", "missing"):
            self.assertEqual(int(ck[f"checkpoint_{name}" if name != "hit" else "checkpoint_hits"]),
                             states.count(name), ck)
        return ck

    def assert_agent_counts(self, hits, stale, missing, stale_keys):
        inst = self.h.instance("kv")
        self.assertEqual((inst["config_hits"], inst["config_stale"], inst["config_missing"],
                          inst["config_stale_keys"]), (hits, stale, missing, stale_keys), inst)

    def test_hits_after_kill9_and_only_the_changed_file_is_redone(self):
        h = self.h
        write(self.conf, "# spare-kv test\nmaxclients 64\nhz 20\nmaxmemory 512mb\n")
        write(self.users, "user default on >def-pw\nuser alice on >alice-pw1 ~* &* +@all\n"
                          "user mallory off >m-pw\n")
        h.start_agent()
        port = free_port()
        pid, _ = h.run("kv", [SPARE_KV, "--port", str(port), "--config", self.conf,
                              "--users", self.users])
        self.assertEqual(self.wait_up(port), NOAUTH)

        # First start: nothing saved yet; both parsed and saved.
        self.assert_checkpoint(port, "alice-pw1", "missing", "missing", ("1", "1"))
        self.assert_agent_counts(0, 0, 2, [])
        saved = sorted(os.listdir(os.path.join(h.dir, "instances", "kv", "config")))
        self.assertEqual(saved, ["config", "users"])
        replies = session(port, "GET k", "AUTH alice nope", "AUTH mallory m-pw",
                          "AUTH alice alice-pw1", "SET k v1", "AUTH def-pw", "GET k")
        self.assertEqual(replies, [NOAUTH, WRONGPASS, WRONGPASS, "OK", "OK", "OK", "v1"])
        self.assertEqual(self.config_get(port, "def-pw", "m*", "hz"),
                         {"maxclients": "64", "maxmemory": str(512 << 20),
                          "maxmemory-policy": "noeviction", "hz": "20"})

        # kill -9 with both files unchanged: both hits, nothing parsed or saved.
        pid = self.kill9_and_wait(pid)
        self.assertEqual(self.wait_up(port), NOAUTH)
        self.assert_checkpoint(port, "alice-pw1", "hit", "hit", ("0", "0"))
        self.assert_agent_counts(2, 0, 2, [])
        self.assertEqual(session(port, "GET k", "AUTH alice alice-pw1", "GET k"),
                         [NOAUTH, "OK", "v1"])
        # The configuration came from the checkpoint: still applied.
        self.assertEqual(self.config_get(port, "def-pw", "m*", "hz"),
                         {"maxclients": "64", "maxmemory": str(512 << 20),
                          "maxmemory-policy": "noeviction", "hz": "20"})

        # Change alice's password: only "users" is stale and redone.
        write(self.users, "user default on >def-pw\nuser alice on >alice-pw2 ~* &* +@all\n"
                          "user mallory off >m-pw\n")
        pid = self.kill9_and_wait(pid)
        self.assertEqual(self.wait_up(port), NOAUTH)
        self.assert_checkpoint(port, "alice-pw2", "hit", "stale", ("0", "1"))
        self.assert_agent_counts(3, 1, 2, ["users"])
        self.assertEqual(session(port, "AUTH alice alice-pw1", "GET k", "AUTH alice alice-pw2",
                                 "GET k"), [WRONGPASS, NOAUTH, "OK", "v1"])
        table = h.spare("status", "--agent", h.dir)
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn("CONFIG H/S/M", table.stdout)
        self.assertRegex(table.stdout, r"\bkv\b.*\b3/1/2 stale:users\b")
        metrics = h.spare("metrics", "--agent", h.dir)
        self.assertEqual(metrics.returncode, 0, metrics.stderr)
        for name, value in (("hits", 3), ("stale", 1), ("missing", 2)):
            self.assertRegex(metrics.stdout,
                             rf'(?m)^spare_config_{name}_total\{{instance="kv",id="kv"\}} {value}$')

        # Unchanged again: the re-saved users checkpoint is a hit now.
        pid = self.kill9_and_wait(pid)
        self.assertEqual(self.wait_up(port), NOAUTH)
        self.assert_checkpoint(port, "alice-pw2", "hit", "hit", ("0", "0"))
        self.assert_agent_counts(5, 1, 2, [])
        self.assertEqual(session(port, "AUTH alice alice-pw2", "GET k"), ["OK", "v1"])

    def test_malformed_config_is_refused_with_file_line_and_directive(self):
        h = self.h
        # Without an agent: refused before serving.
        write(self.conf, "maxclients 10\n# typo next\nmaxclient 20\n")
        port = free_port()
        p = subprocess.run([SPARE_KV, "--unprotected", "--port", str(port), "--config", self.conf],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"{self.conf}:3: unknown directive 'maxclient'", p.stderr)
        self.assertNotIn("listening", p.stderr)
        write(self.users, "user alice on >a\nuser alice on >b\n")
        p = subprocess.run([SPARE_KV, "--unprotected", "--port", str(port), "--users", self.users],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"{self.users}:2: user 'alice' is already defined on line 1", p.stderr)

        # Under the agent: a restart that finds the file broken refuses it
        # (stale, not saved) and, crashing each time, ends failed.
        write(self.conf, "maxclients 10\n")
        h.start_agent()
        pid, _ = h.run("kv", [SPARE_KV, "--port", str(port), "--config", self.conf],
                       extra=("--max-restarts", "1"))
        self.assertEqual(self.wait_up(port), "PONG")
        self.assert_agent_counts(0, 0, 1, [])
        write(self.conf, "maxclients 10\nmaxclients lots\n")
        os.kill(pid, 9)
        inst = h.wait_instance("kv", lambda i: i["state"] == "failed", timeout=20,
                               what="failed on the malformed config")
        self.assertIn("crash loop", inst["reason"])
        self.assertIn(f"{self.conf}:2: 'maxclients' wants an integer from 1 to 1000000, got 'lots'",
                      h.instance_log("kv"))
        self.assert_agent_counts(0, 1, 1, ["config"])
        rc, out = redis(port, "PING", timeout=2)
        self.assertNotEqual((rc, out), (0, "PONG"), "a failed instance still serves")


if __name__ == "__main__":
    unittest.main()
