#!/usr/bin/env bash
# bench/run_all.sh — builds (Release) and runs every spare benchmark with its
# default settings; writes the JSON summaries docs/BENCHMARKS.md quotes:
#
#   bench/results/restart.json           restart_bench, defaults (agent dir in $TMPDIR
#                                        or /tmp, tight PING loop)
#   bench/results/restart_tmpfs.json     same, agent directory on tmpfs (/dev/shm):
#                                        isolates the agent's fsync of state.json
#   bench/results/restart_tmpfs_poll200.json   same, 200 us between connect attempts:
#                                        isolates the poll loop's own CPU use (2 cores)
#   bench/results/restart_tmpfs_poll200_rewrite32.json   same, 32 MiB of values
#                                        rewritten before each kill (a write working set)
#   bench/results/throughput.json        throughput_bench, defaults (1 GiB of 1 KiB values,
#                                        random existing keys, -P 1 and 16)
#   bench/results/commit.json            commit_bench, both trackers
#
#   bench/run_all.sh                     # build dir: build-bench
#   BUILD=/path/to/build bench/run_all.sh
#   TRACKER=mprotect bench/run_all.sh    # tracker for restart + throughput
#   WAIT_QUIET=2 bench/run_all.sh        # before each bench wait (<= 15 min) for load < 2
#   ONLY="restart commit" bench/run_all.sh
#   SNAPSHOT=0 bench/run_all.sh          # build the work tree as it is (default: a clean
#                                        # export of HEAD, so figures name one commit)
#   QUICK=1 bench/run_all.sh             # small sizes, few rounds: a smoke test
#                                        # (results in bench/results/quick/, not quoted)
#
# Every script prints a human table and its JSON summary. A failing bench
# (e.g. data lost across a restart) stops the run with a non-zero status.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
BUILD="${BUILD:-$repo/build-bench}"
TRACKER="${TRACKER:-uffd}"
ONLY="${ONLY:-restart throughput commit}"
if [[ -n "${QUICK:-}" ]]; then
  RESULTS="${RESULTS:-$here/results/quick}"
else
  RESULTS="${RESULTS:-$here/results}"
fi
mkdir -p "$RESULTS"

if [[ "${SNAPSHOT:-1}" == 1 ]]; then
  # Figures must name the code they measured: build a clean export of HEAD,
  # not a work tree that others may be editing.
  rev="$(git -C "$repo" rev-parse --short=12 HEAD)"
  src="$BUILD/src-$rev"
  if [[ ! -d "$src" ]]; then
    mkdir -p "$src.tmp"
    git -C "$repo" archive HEAD | tar -x -C "$src.tmp"
    mv "$src.tmp" "$src"
  fi
  cmake -S "$src" -B "$BUILD/$rev" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  BUILD="$BUILD/$rev"
  export SPARE_BENCH_GIT="$rev (clean export of HEAD)"
else
  cmake -S "$repo" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
ninja -C "$BUILD" spare_cli spare-kv commit_bench

quiet=()
[[ -n "${WAIT_QUIET:-}" ]] && quiet=(--wait-quiet "$WAIT_QUIET")
if [[ -n "${QUICK:-}" ]]; then
  restart=(--sizes 64M,256M --kills 5)
  tput=(--data-sizes 64M --rounds 2 --warmup 0 --requests 50000)
  commit=(--repetitions 2 --iterations-scale 0.2)
else
  restart=(--sizes 64M,4G --kills 20)
  tput=(--rounds 5)
  commit=(--repetitions 10)
fi

run() { echo "== $*" >&2; python3 "$@"; }

if [[ " $ONLY " == *" restart "* ]]; then
  run "$here/restart_bench.py" --build "$BUILD" --tracker "$TRACKER" "${restart[@]}" \
    "${quiet[@]}" --out "$RESULTS/restart.json"
  if [[ -d /dev/shm ]]; then
    run "$here/restart_bench.py" --build "$BUILD" --tracker "$TRACKER" "${restart[@]}" \
      "${quiet[@]}" --agent-dir-base /dev/shm --out "$RESULTS/restart_tmpfs.json"
    run "$here/restart_bench.py" --build "$BUILD" --tracker "$TRACKER" "${restart[@]}" \
      "${quiet[@]}" --agent-dir-base /dev/shm --poll-sleep-us 200 \
      --out "$RESULTS/restart_tmpfs_poll200.json"
    run "$here/restart_bench.py" --build "$BUILD" --tracker "$TRACKER" "${restart[@]}" \
      "${quiet[@]}" --agent-dir-base /dev/shm --poll-sleep-us 200 --rewrite-mib 32 \
      --out "$RESULTS/restart_tmpfs_poll200_rewrite32.json"
  fi
fi
if [[ " $ONLY " == *" throughput "* ]]; then
  run "$here/throughput_bench.py" --build "$BUILD" --tracker "$TRACKER" "${tput[@]}" \
    "${quiet[@]}" --out "$RESULTS/throughput.json"
fi
if [[ " $ONLY " == *" commit "* ]]; then
  run "$here/commit_bench.py" --build "$BUILD" --trackers uffd,mprotect "${commit[@]}" \
    "${quiet[@]}" --out "$RESULTS/commit.json"
fi
echo "results in $RESULTS" >&2
