#!/usr/bin/env bash
# bench/run_all.sh — builds (Release) and runs every spare benchmark with its
# default settings; writes bench/results/{restart,throughput,commit}.json.
#
#   bench/run_all.sh                 # build dir: build-bench
#   BUILD=/path/to/build bench/run_all.sh
#   TRACKER=mprotect bench/run_all.sh   # tracker for restart + throughput
#   QUICK=1 bench/run_all.sh         # small sizes, few rounds: a smoke test
#                                    # (results in bench/results/quick/, not quoted)
#
# Every script prints a human table and its JSON summary; the JSON files
# are what docs/BENCHMARKS.md quotes. A failing bench stops the run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
BUILD="${BUILD:-$repo/build-bench}"
TRACKER="${TRACKER:-uffd}"
if [[ -n "${QUICK:-}" ]]; then
  RESULTS="${RESULTS:-$here/results/quick}"
else
  RESULTS="${RESULTS:-$here/results}"
fi
mkdir -p "$RESULTS"

cmake -S "$repo" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD" spare_cli spare-kv commit_bench

if [[ -n "${QUICK:-}" ]]; then
  restart=(--sizes 64M,256M --kills 5)
  tput=(--rounds 2 --warmup 0 --requests 50000)
  commit=(--repetitions 2 --iterations-scale 0.2)
else
  restart=(--sizes 64M,4G --kills 20)
  tput=(--rounds 5)
  commit=(--repetitions 10)
fi

echo "== restart_bench" >&2
python3 "$here/restart_bench.py" --build "$BUILD" --tracker "$TRACKER" "${restart[@]}" \
  --out "$RESULTS/restart.json"
echo "== throughput_bench" >&2
python3 "$here/throughput_bench.py" --build "$BUILD" --tracker "$TRACKER" "${tput[@]}" \
  --out "$RESULTS/throughput.json"
echo "== commit_bench" >&2
python3 "$here/commit_bench.py" --build "$BUILD" --trackers uffd,mprotect "${commit[@]}" \
  --out "$RESULTS/commit.json"
echo "results in $RESULTS" >&2
