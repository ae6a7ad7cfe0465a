"""libspare links what a protected program needs and nothing of the agent's.

A protected program links `spare` (libspare): common, alloc, region, ipc,
epoch, runtime. The agent's dependencies (spdlog, toml++; UCX with the next
issue) must not reach it. Checked three ways, each able to fail:
  1. the link interface CMake gives the `spare` target (written at configure
     time to BUILD/spare_link_interface.txt) names none of them;
  2. the spare-kv binary has no symbol from them (nm) and loads none of
     their shared objects (ldd);
  3. no source of a libspare module, nor a public header, includes their
     headers; only src/net/ may include UCX headers.
"""

import os
import re
import subprocess
import unittest
from pathlib import Path

BIN = Path(os.environ["SPARE_BIN"])
BUILD = BIN.parent
SRC = Path(__file__).resolve().parent.parent
LIBSPARE_DIRS = ["src/common", "src/alloc", "src/region", "src/ipc", "src/epoch", "src/runtime",
                 "include/spare"]
FORBIDDEN_LINK = re.compile(r"spdlog|toml|ucx|ucp|ucs|fmt::", re.I)
FORBIDDEN_SYMBOL = re.compile(r"\b(spdlog|toml|fmt)::|\bucp_|\bucs_")
FORBIDDEN_LIBS = re.compile(r"lib(spdlog|fmt|ucp|ucs|uct)\b")
FORBIDDEN_INCLUDE = re.compile(r'#\s*include\s*[<"](spdlog/|toml\+\+/|ucp/|ucs/|uct/)')
UCX_INCLUDE = re.compile(r'#\s*include\s*[<"](ucp/|ucs/|uct/)')


class LibBoundaries(unittest.TestCase):
    def test_link_interface(self):
        text = (BUILD / "spare_link_interface.txt").read_text()
        self.assertIn("xxhash", text.lower(), f"the file should name libspare's deps: {text!r}")
        self.assertIsNone(FORBIDDEN_LINK.search(text),
                          f"libspare's link interface names an agent dependency: {text!r}")

    def test_spare_kv_symbols(self):
        exe = BIN / "spare-kv"
        nm = subprocess.run(["nm", "-C", str(exe)], capture_output=True, text=True, check=True)
        self.assertIn("spare::Runtime::Attach", nm.stdout, "nm output should show libspare")
        bad = sorted({m.group(0) for m in FORBIDDEN_SYMBOL.finditer(nm.stdout)})
        self.assertEqual(bad, [], f"spare-kv carries symbols of {bad}")
        ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True)
        self.assertIsNone(FORBIDDEN_LIBS.search(ldd.stdout), f"spare-kv loads:\n{ldd.stdout}")

    def test_includes(self):
        offenders = []
        for d in LIBSPARE_DIRS:
            for f in (SRC / d).rglob("*"):
                if f.suffix in (".h", ".cc") and FORBIDDEN_INCLUDE.search(f.read_text()):
                    offenders.append(str(f.relative_to(SRC)))
        for f in (SRC / "src").rglob("*"):
            if (f.suffix in (".h", ".cc") and not str(f.relative_to(SRC)).startswith("src/net/")
                    and UCX_INCLUDE.search(f.read_text())):
                offenders.append(str(f.relative_to(SRC)))
        self.assertEqual(offenders, [], "libspare sources include agent-only headers "
                                        "(or UCX outside src/net/)")


if __name__ == "__main__":
    unittest.main()
