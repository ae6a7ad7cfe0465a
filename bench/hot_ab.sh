#!/usr/bin/env bash
# bench/hot_ab.sh [BUILD] [ROUNDS] — spare-kv SET throughput, unprotected vs
# `local` vs `hot` (standby on this host, loopback), on one data set:
# 1,048,576 keys x 1 KiB values (1 GiB, DEBUG POPULATE), then
# `redis-benchmark -t set -r 1048576 -d 1024 -c 50 -n 200000` with -P 1 and
# -P 16, ROUNDS (3) rounds, the three modes interleaved within each round.
# UCX_TLS is pinned (default tcp; UCX_TLS=shm,tcp for shared memory).
# Prints one line per run and the medians; ports from PORT_BASE (7200).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
ROUNDS=${2:-3}
P=${PORT_BASE:-7200}
export UCX_TLS=${UCX_TLS:-tcp}
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$BUILD/bin/spare" standby --listen "127.0.0.1:$P" --name bench-standby >"$dir/standby.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$dir/standby.log" && break; sleep 0.05; done
grep -q "listening on" "$dir/standby.log" || { echo "standby did not start:" >&2; cat "$dir/standby.log" >&2; exit 1; }
"$BUILD/bin/spare" agent --dir "$dir/agent" --standby "127.0.0.1:$P" >"$dir/agent.log" 2>&1 &
pids+=($!)
sleep 0.5
wait_pong() { for _ in $(seq 200); do redis-cli -p "$1" PING 2>/dev/null | grep -q PONG && return; sleep 0.05; done; echo "no PONG on $1" >&2; exit 1; }
kport=$((P + 1))
start() {  # start MODE -> the port
  case $1 in
    unprotected)
      "$BUILD/bin/spare-kv" --port "$kport" --region-size 2147483648 --unprotected >/dev/null 2>&1 &
      kv=$!
      pids+=("$kv") ;;
    local|hot)
      "$BUILD/bin/spare" run --agent "$dir/agent" --id "kv-$1" --policy "$1" -- \
        "$PWD/$BUILD/bin/spare-kv" --port "$kport" --region-size 2147483648 >/dev/null ;;
  esac
  wait_pong "$kport"
  # The server on the port must be the one just started, in this mode.
  want=$([[ $1 == unprotected ]] && echo unprotected || echo protected)
  got=$(redis-cli -p "$kport" INFO spare | tr -d '\r' | sed -n 's/^mode://p')
  [[ $got == "$want" ]] || { echo "port $kport answers in mode '$got', not $want" >&2; exit 1; }
  [[ $(timeout 120 redis-cli -p "$kport" DEBUG POPULATE 1048576 key 1024) == OK ]] || { echo "populate failed" >&2; exit 1; }
}
stop() {
  case $1 in
    unprotected) kill "$kv"; wait "$kv" 2>/dev/null || true ;;
    *) "$BUILD/bin/spare" stop --agent "$dir/agent" --id "kv-$1" >/dev/null ;;
  esac
  sleep 0.3
}
declare -A rps
echo "UCX_TLS=$UCX_TLS, 1 GiB (1,048,576 x 1 KiB), redis-benchmark -t set -r 1048576 -d 1024 -c 50 -n 200000"
for r in $(seq "$ROUNDS"); do
  for mode in unprotected local hot; do
    start "$mode"
    for pl in 1 16; do
      raw=$(timeout 120 redis-benchmark -p "$kport" -t set -r 1048576 -d 1024 -c 50 -n 200000 -P "$pl" -q 2>&1 | tr '\r' '\n') || true
      out=$(echo "$raw" | grep "requests per second" | tail -1) || true
      if [[ -z $out ]]; then echo "redis-benchmark failed ($mode -P $pl): $(echo "$raw" | tail -3)" >&2; tail -5 "$dir/agent.log" >&2; exit 1; fi
      v=$(echo "$out" | sed -E 's/.*SET: ([0-9.]+) requests per second.*/\1/')
      p50=$(echo "$out" | sed -E 's/.*p50=([0-9.]+) msec.*/\1/')
      echo "round $r $mode -P $pl: $v rps (p50 $p50 ms)"
      rps[$mode,$pl]="${rps[$mode,$pl]:-} $v"
    done
    stop "$mode"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for pl in 1 16; do
  u=$(echo "${rps[unprotected,$pl]}" | median); l=$(echo "${rps[local,$pl]}" | median); h=$(echo "${rps[hot,$pl]}" | median)
  echo "-P $pl medians: unprotected $u, local $l ($(echo "scale=3; $l / $u" | bc)), hot $h ($(echo "scale=3; $h / $u" | bc))"
done
if grep -q "suspected" "$dir/standby.log"; then echo "FALSE SUSPICIONS on the standby:"; grep suspected "$dir/standby.log"; fi
if grep -q "silent for" "$dir/agent.log"; then echo "the agent suspected the standby:"; grep "silent for" "$dir/agent.log"; fi
