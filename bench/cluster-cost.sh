#!/usr/bin/env bash
# What a cross-instance message costs, in one run:   bench/cluster-cost.sh
#
# Redis, instances A and B and the app share core 0; the load generator is on core 1. N
# sockets (one user each) connect to B; per-user messages are published through A's publish
# socket (batches of 50) at RATE msg/s for SECS, so every message crosses Redis. Measured for
# two delivery paths of kept messages (history on): the relay (the default) and the Socket.IO
# adapter (what an older sockgate in the cluster forces; emulated by one more subscriber of
# the adapter's request channel). Prints delivered/sent, latency p50/p99, and CPU µs per
# message of A, B and Redis (utime+stime over the run). Bounded: 2 × SECS of load.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-2000}; RATE=${RATE:-2000}; SECS=${SECS:-8}
for tool in redis-server redis-cli node taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench/cluster-cost.sh: '$tool' is required" >&2; exit 2; }
done
cargo build --release --quiet -p sockgate -p loadgen
# SOCKGATE=/path/to/another/build compares a build (e.g. the previous commit's) in the same harness.
SOCKGATE=${SOCKGATE:-$ROOT/target/release/sockgate}; LOADGEN=$ROOT/target/release/loadgen
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-bench-XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; sleep 0.3; kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
RP=39401; APP=39402; AP=39403; BP=39404
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_for() { for _ in $(seq 100); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }

taskset -c 0 redis-server --port $RP --save '' --appendonly no >"$WORK/redis.log" 2>&1 & PIDS+=($!); REDIS=$!
PORT=$APP taskset -c 0 node bench/node-app/app.mjs >"$WORK/app.log" 2>&1 & PIDS+=($!)
wait_for "curl -fs http://127.0.0.1:$APP/hello"
start() { # name port
  mkdir -p "$WORK/$1"
  (cd "$WORK/$1" && exec env SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$2 SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
    SIDECAR_PUBLISH__SOCKET="$WORK/$1/p.sock" SIDECAR_CLUSTER__REDIS_URL=redis://127.0.0.1:$RP \
    SIDECAR_REALTIME__TRANSPORTS='["websocket"]' SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 SIDECAR_LOG__FILTER=info \
    taskset -c 0 "$SOCKGATE" >"$WORK/$1/log" 2>&1) & PIDS+=($!)
  wait_for "test -S $WORK/$1/p.sock"
}
start a $AP; A=${PIDS[-1]}
start b $BP; B=${PIDS[-1]}
wait_for "grep -q 'every instance relays' $WORK/b/log"
sleep 1.5
printf '%-8s %9s %8s %8s %8s %8s %8s %8s\n' path sent delivered p50_ms p99_ms A_us B_us redis_us
for path in relay adapter; do
  OLDER=
  if [ "$path" = adapter ]; then
    redis-cli -p $RP SSUBSCRIBE 'socket.io-request#/#' >/dev/null 2>&1 & OLDER=$!; PIDS+=($OLDER)
    wait_for "grep -q 'older sockgate is connected' $WORK/a/log"
  fi
  rm -f "$WORK/ready" "$WORK/stop" "$WORK/out.json"
  taskset -c 1 "$LOADGEN" stream --addr 127.0.0.1:$BP --n "$N" --rate "$RATE" --batch 50 --duration "$SECS" \
    --publish-socket "$WORK/a/p.sock" --ready-file "$WORK/ready" --stop-file "$WORK/stop" \
    --out "$WORK/out.json" --max-secs 120 2>>"$WORK/loadgen.log" &
  LG=$!; PIDS+=($LG)
  wait_for "test -f $WORK/ready"
  a0=$(cpu $A); b0=$(cpu $B); r0=$(cpu $REDIS)
  # Read before the load generator closes its sockets (it writes the result first).
  for _ in $(seq 3000); do [ -s "$WORK/out.json" ] && break; sleep 0.02; done
  a1=$(cpu $A); b1=$(cpu $B); r1=$(cpu $REDIS)
  wait $LG
  python3 - "$WORK/out.json" "$path" "$a0" "$a1" "$b0" "$b1" "$r0" "$r1" "$HZ" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); path = sys.argv[2]
a0, a1, b0, b1, r0, r1, hz = map(float, sys.argv[3:])
n = max(o["sent"], 1)
us = lambda x0, x1: (x1 - x0) / hz * 1e6 / n
print(f'{path:<8} {o["sent"]:9d} {o["delivered"]:8d} {o["p50_us"]/1000:8.1f} {o["p99_us"]/1000:8.1f} {us(a0,a1):8.1f} {us(b0,b1):8.1f} {us(r0,r1):8.1f}')
PY
  [ -n "$OLDER" ] && kill "$OLDER"
  sleep 2 # the first phase's sockets are gone from B
done
