# Shared by bench/cluster-cost.sh and bench/cluster-scale.sh (sourced, not run).
#
# Starts and stops Redis, sockgate instances (with the benchmark's Node app behind them) and
# Node socket.io instances (bench/node-socketio/server.mjs, @socket.io/redis-adapter when
# clustered), all on core 0; the load generator runs on core 1. Every process started here is
# remembered in PIDS and stopped by the EXIT trap or by stop_all.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
for tool in redis-server redis-cli node npm taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "$0: '$tool' is required" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "$0 needs 2 cores (servers on 0, load on 1)" >&2; exit 2; }
if [ ! -f bench/node-socketio/node_modules/@socket.io/redis-adapter/package.json ]; then
  echo "npm ci in bench/node-socketio (socket.io 4.8 + @socket.io/redis-adapter)" >&2
  (cd bench/node-socketio && npm ci --no-audit --no-fund --loglevel=error)
fi
# BUILD=0 takes the release builds already in target/ (e.g. while other builds load the machine).
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet -p sockgate -p loadgen
# SOCKGATE=/path/to/another/build compares a build (e.g. the previous commit's) in the same harness.
SOCKGATE=${SOCKGATE:-$ROOT/target/release/sockgate}; LOADGEN=$ROOT/target/release/loadgen
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$ROOT/target/bench/$(basename "$0" .sh)-$STAMP}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-bench-XXXXXX")
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
# Below the ephemeral range (32768–60999 here): a listener there can collide with any outgoing
# connection on the machine that happens to hold the same local port.
BASE=${BENCH_PORT_BASE:-23400}
RP=$((BASE+1)); APP=$((BASE+2))
for p in $(seq $((BASE+1)) $((BASE+9))); do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "$0: port $p is in use (set BENCH_PORT_BASE)" >&2; exit 2
  fi
done
wait_for() { for _ in $(seq 150); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }

start_redis() { # fresh, empty Redis: sets REDIS
  rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
  (cd "$WORK/redis" && exec taskset -c 0 redis-server --bind 127.0.0.1 --port $RP --save '' --appendonly no) >"$WORK/redis/log" 2>&1 &
  REDIS=$!; PIDS+=($REDIS)
  wait_for "[ \"\$(redis-cli -p $RP ping)\" = PONG ]"
}
start_app() { # the Node app behind sockgate (SSR page + /api/session)
  PORT=$APP taskset -c 0 node bench/node-app/app.mjs >>"$WORK/app.log" 2>&1 & PIDS+=($!)
  wait_for "curl -fs http://127.0.0.1:$APP/hello"
}
start_sockgate() { # name port cluster(1|0) [binary, default $SOCKGATE]: sets LAST_PID; publish socket $WORK/name/p.sock
  rm -rf "$WORK/$1"; mkdir -p "$WORK/$1"
  local bin=${4:-$SOCKGATE}
  local redis=()
  [ "$3" = 1 ] && redis=(SIDECAR_CLUSTER__REDIS_URL=redis://127.0.0.1:$RP)
  # PUBSUB=plain|sharded: cluster.pubsub (default: sockgate's, auto).
  [ "$3" = 1 ] && [ -n "${PUBSUB:-}" ] && redis+=(SIDECAR_CLUSTER__PUBSUB=$PUBSUB)
  (cd "$WORK/$1" && exec env SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$2 SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
    SIDECAR_PUBLISH__SOCKET="$WORK/$1/p.sock" "${redis[@]}" \
    SIDECAR_REALTIME__TRANSPORTS='["websocket"]' SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 SIDECAR_LOG__FILTER=info \
    taskset -c 0 "$bin" >"$WORK/$1/log" 2>&1) & LAST_PID=$!; PIDS+=($LAST_PID)
  wait_for "test -S $WORK/$1/p.sock"
  wait_for "curl -so /dev/null http://127.0.0.1:$2/"
}
start_node() { # name port cluster(1|0): sets LAST_PID; publish socket $WORK/name/p.sock
  rm -rf "$WORK/$1"; mkdir -p "$WORK/$1"
  local redis=
  [ "$3" = 1 ] && redis=redis://127.0.0.1:$RP
  PORT=$2 PUBLISH_SOCKET="$WORK/$1/p.sock" REDIS_URL=$redis taskset -c 0 node bench/node-socketio/server.mjs \
    >"$WORK/$1/log" 2>&1 & LAST_PID=$!; PIDS+=($LAST_PID)
  wait_for "test -S $WORK/$1/p.sock"
  wait_for "curl -fs http://127.0.0.1:$2/hello"
  if [ "$3" = 1 ]; then wait_for "grep -q 'redis adapter' $WORK/$1/log"; fi
}
run_loadgen() { # out.json loadgen-cluster-args...
  local out=$1; shift
  # PERF_PID=<pid>: `perf stat` counts that process's instructions over the whole run
  # (warm-up and every phase), into <out>.perf.
  local perf=
  if [ -n "${PERF_PID:-}" ]; then
    perf stat -e instructions:u,instructions:k -p "$PERF_PID" -o "${out%.json}.perf" & perf=$!
  fi
  taskset -c 1 "$LOADGEN" cluster --out "$out" --max-secs 600 "$@" 2>>"$OUT/loadgen.log" &
  local lg=$!; PIDS+=($lg)
  wait "$lg" || { echo "$0: the load generator failed (see $OUT/loadgen.log)" >&2; tail -3 "$OUT/loadgen.log" >&2; exit 1; }
  if [ -n "$perf" ]; then kill -INT "$perf" 2>/dev/null || true; wait "$perf" || true; fi
}
