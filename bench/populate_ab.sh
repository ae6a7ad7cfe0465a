#!/usr/bin/env bash
# bench/populate_ab.sh [BUILD] [ROUNDS] — DEBUG POPULATE of 1,048,576 keys x
# 1 KiB values (1 GiB) into spare-kv, protected (`local`, under its own
# agent) and unprotected, alternating, ROUNDS (3) times each; prints the
# seconds of each. Ports 7100/7101 on loopback (PORT_BASE to move them).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
ROUNDS=${2:-3}
P=${PORT_BASE:-7100}
dir=$(mktemp -d)
"$BUILD/bin/spare" agent --dir "$dir" >"$dir/agent.out" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
wait_pong() { for _ in $(seq 100); do redis-cli -p "$1" PING 2>/dev/null | grep -q PONG && return; sleep 0.05; done; echo "no PONG on $1" >&2; exit 1; }
timed() { local t0 t1; t0=$(date +%s.%N); out=$(redis-cli -p "$1" DEBUG POPULATE 1048576 key 1024); t1=$(date +%s.%N); [[ $out == OK ]] || { echo "populate: $out" >&2; exit 1; }; echo "$t1 - $t0" | bc; }
sleep 0.5
for r in $(seq "$ROUNDS"); do
  "$BUILD/bin/spare" run --agent "$dir" --id "p$r" --policy local -- "$PWD/$BUILD/bin/spare-kv" --port "$P" --region-size 2147483648 >/dev/null
  wait_pong "$P"
  echo "round $r protected   $(timed "$P") s"
  "$BUILD/bin/spare" stop --agent "$dir" --id "p$r" >/dev/null
  "$BUILD/bin/spare-kv" --port $((P + 1)) --region-size 2147483648 --unprotected >/dev/null 2>&1 &
  kv=$!
  wait_pong $((P + 1))
  echo "round $r unprotected $(timed $((P + 1))) s"
  kill "$kv"; wait "$kv" 2>/dev/null || true
done
