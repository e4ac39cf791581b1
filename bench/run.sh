#!/usr/bin/env bash
# sockgate's benchmark, in one command:   bench/run.sh [--quick]     (CLUSTER=1: + the cluster phase)
#
# Compares, side by side on this machine,
#   * sockgate (+ the Node app behind it)  vs  the seed design (socket.io 4.8 inside the Node app)
#     — memory per idle authenticated socket, connect rate, broadcast delivery time and CPU,
#       per-user publish rate, and the app's SSR page under realtime load;
#   * sockgate vs nginx as a plain reverse proxy, and the Node page direct vs through sockgate.
# Servers run on core 0 (taskset -c 0), load generators on core 1; one broadcast phase lets
# each server use both cores. Each figure is the median of
# RUNS runs (3; 1 with --quick). Results: BENCHMARKS.md (table, machine, chart bench/chart.svg),
# raw data in target/bench/<timestamp>/ and bench/results.json.
#
# Installs what it lacks: wrk and nginx (apt-get), socket.io (npm ci in bench/node-socketio).
# Every process it starts is stopped on exit; every load loop is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ "$QUICK" = 1 ]; then
  LEVELS=${LEVELS:-1000,2000}; BOTH_LEVELS=${BOTH_LEVELS:-2000}; RUNS=${RUNS:-1}; BCASTS=${BCASTS:-20}; STEP_SECS=${STEP_SECS:-1.5}
  STREAM_N=${STREAM_N:-1000}; STREAM_RATE=${STREAM_RATE:-500}; WRK_SECS=${WRK_SECS:-3}
else
  LEVELS=${LEVELS:-2000,5000,10000,19000}; BOTH_LEVELS=${BOTH_LEVELS:-10000,19000}; RUNS=${RUNS:-3}; BCASTS=${BCASTS:-20}; STEP_SECS=${STEP_SECS:-2.5}
  STREAM_N=${STREAM_N:-10000}; STREAM_RATE=${STREAM_RATE:-5000}; WRK_SECS=${WRK_SECS:-6}
fi
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$ROOT/target/bench/$STAMP}
mkdir -p "$OUT"
LOG=$OUT/run.log
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
T0=$(date +%s)

# --- prerequisites ---------------------------------------------------------------------------
[ "$(nproc)" -ge 2 ] || { echo "bench/run.sh needs 2 cores (server on 0, load on 1)" >&2; exit 2; }
for tool in cargo node npm taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: '$tool' is required" >&2; exit 2; }
done
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -f bench/node-socketio/node_modules/@socket.io/redis-adapter/package.json ]; then
  say "npm ci in bench/node-socketio (socket.io 4.8 for the seed design, @socket.io/redis-adapter for its cluster)"
  (cd bench/node-socketio && npm ci --no-audit --no-fund --loglevel=error)
fi
say "building sockgate and loadgen (release)"
cargo build --release --quiet -p sockgate -p loadgen
SOCKGATE=$ROOT/target/release/sockgate
{ git rev-parse --short HEAD 2>/dev/null || echo unknown
  if [ -n "$(git status --porcelain -- src vendor Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    echo " + uncommitted changes in src/, vendor/ or Cargo.*"
  fi
} | tr -d '\n' >"$OUT/version.txt"
LOADGEN=$ROOT/target/release/loadgen
ulimit -n "$(ulimit -Hn)"

# --- process bookkeeping ---------------------------------------------------------------------
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
stop() { # pid...
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
wait_http() { # url
  for _ in $(seq 100); do curl -fso /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}
wait_file() { # path seconds
  for _ in $(seq $(( $2 * 10 ))); do [ -e "$1" ] && return 0; sleep 0.1; done
  echo "$1 did not appear" >&2; return 1
}

# Below Linux's ephemeral range (32768-60999): a port in it can be taken meanwhile as the source
# port of some outgoing connection, and a server started later fails with "Address in use".
B=${BENCH_PORT_BASE:-27100}
APP_PORT=$((B+1)); SEED_PORT=$((B+2)); SG_PORT=$((B+10)); SGP_PORT=$((B+11)); NGX_PORT=$((B+12)); UP_PORT=$((B+20))
for p in $APP_PORT $SEED_PORT $SG_PORT $SGP_PORT $NGX_PORT $UP_PORT; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "bench/run.sh: port $p is in use (set BENCH_PORT_BASE to move the benchmark's ports)" >&2; exit 2
  fi
done
SG_SOCK=$OUT/sockgate.sock; SEED_SOCK=$OUT/seed.sock

start_app() {
  PORT=$APP_PORT taskset -c "${APP_CPUS:-0}" node bench/node-app/app.mjs >>"$OUT/app.log" 2>&1 &
  APP_PID=$!; PIDS+=("$APP_PID"); wait_http "http://127.0.0.1:$APP_PORT/hello"
}
start_sockgate() { # public-port upstream-url
  rm -f "$SG_SOCK"
  (cd "$OUT" && SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$1 SIDECAR_UPSTREAM__URL=$2 \
    SIDECAR_PUBLISH__SOCKET=$SG_SOCK SIDECAR_LOG__FILTER=warn SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
    exec taskset -c "${SG_CPUS:-0}" "$SOCKGATE" >>"$OUT/sockgate.log" 2>&1) &
  SG_PID=$!; PIDS+=("$SG_PID")
  wait_file "$SG_SOCK" 10
  for _ in $(seq 100); do curl -so /dev/null "http://127.0.0.1:$1/" && break; sleep 0.1; done
}
start_seed() {
  rm -f "$SEED_SOCK"
  PORT=$SEED_PORT PUBLISH_SOCKET=$SEED_SOCK taskset -c "${SEED_CPUS:-0}" node --expose-gc bench/node-socketio/server.mjs >>"$OUT/seed.log" 2>&1 &
  SEED_PID=$!; PIDS+=("$SEED_PID"); wait_http "http://127.0.0.1:$SEED_PORT/hello"; wait_file "$SEED_SOCK" 10
}
LG=(taskset -c 1 "$LOADGEN")

say "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load: $(uptime | sed 's/.*load average: //')"
uptime >"$OUT/uptime-start.txt"

# --- 1. sockets: memory, connect rate, broadcast, per-user publish ----------------------------
measure_sockets() { # design(sockgate|seed) phase run server-cpus loadgen-args...
  local design=$1 phase=$2 r=$3 cpus=$4; shift 4
  say "$phase run $r/$RUNS: $design"
  if [ "$design" = sockgate ]; then
    start_app; SG_CPUS=$cpus start_sockgate $SG_PORT "http://127.0.0.1:$APP_PORT"
    "${LG[@]}" sockets --addr 127.0.0.1:$SG_PORT --publish-socket "$SG_SOCK" --server-pids "$SG_PID" "$@" \
      --out "$OUT/$phase-sockgate-$r.json" 2>>"$OUT/loadgen.log"
    stop "$SG_PID" "$APP_PID"
  else
    SEED_CPUS=$cpus start_seed
    "${LG[@]}" sockets --addr 127.0.0.1:$SEED_PORT --publish-socket "$SEED_SOCK" --server-pids "$SEED_PID" --gc 1 "$@" \
      --out "$OUT/$phase-seed-$r.json" 2>>"$OUT/loadgen.log"
    stop "$SEED_PID"
  fi
}
for r in $(seq "$RUNS"); do
  measure_sockets sockgate sockets "$r" 0 --levels "$LEVELS" --broadcasts "$BCASTS" --step-secs "$STEP_SECS" \
    --single-start 2000 --batch-start 5000
  measure_sockets seed sockets "$r" 0 --levels "$LEVELS" --broadcasts "$BCASTS" --step-secs "$STEP_SECS" \
    --single-start 1000 --batch-start 2000
done

# --- 1b. broadcast when the server may use both cores -----------------------------------------
# Node runs JavaScript on one thread; sockgate's runtime has a worker per core. Each server gets
# cores 0 and 1 (the load generator stays on core 1, so it competes with the server there).
for r in $(seq "$RUNS"); do
  for design in sockgate seed; do
    measure_sockets "$design" bothcores "$r" 0,1 --levels "$BOTH_LEVELS" --broadcasts "$BCASTS" --rate-search 0
  done
done

# --- 2. the app's SSR page, idle and under realtime load --------------------------------------
cat >"$OUT/paced.lua" <<'EOF'
-- each connection waits 10 ms after every response: a steady, non-saturating load
function delay() return 10 end
EOF
WRK_SAT=(taskset -c 1 wrk -t1 -c16 -d"${WRK_SECS}s" --latency)
WRK_PACED=(taskset -c 1 wrk -t1 -c8 -d"${WRK_SECS}s" --latency -s "$OUT/paced.lua")
ssr_phase() { # design port publish-socket
  local d=$1 url=http://127.0.0.1:$2/ssr addr=127.0.0.1:$2 sock=$3
  for r in $(seq "$RUNS"); do
    "${WRK_SAT[@]}" "$url" >"$OUT/ssr-$d-idle-sat-$r.txt"
    "${WRK_PACED[@]}" "$url" >"$OUT/ssr-$d-idle-paced-$r.txt"
    if [ "$d" = sockgate ]; then
      "${WRK_SAT[@]}" "http://127.0.0.1:$APP_PORT/ssr" >"$OUT/ssr-direct-sat-$r.txt"
      "${WRK_PACED[@]}" "http://127.0.0.1:$APP_PORT/ssr" >"$OUT/ssr-direct-paced-$r.txt"
    fi
  done
  rm -f "$OUT/stream-ready" "$OUT/stream-stop"
  "${LG[@]}" stream --addr "$addr" --n "$STREAM_N" --rate "$STREAM_RATE" --batch 50 --duration 600 \
    --publish-socket "$sock" --ready-file "$OUT/stream-ready" --stop-file "$OUT/stream-stop" \
    --out "$OUT/stream-$d.json" 2>>"$OUT/loadgen.log" &
  local lg=$!; PIDS+=("$lg")
  wait_file "$OUT/stream-ready" 120
  sleep 1
  for r in $(seq "$RUNS"); do
    "${WRK_SAT[@]}" "$url" >"$OUT/ssr-$d-load-sat-$r.txt"
    "${WRK_PACED[@]}" "$url" >"$OUT/ssr-$d-load-paced-$r.txt"
  done
  touch "$OUT/stream-stop"
  wait "$lg" || say "stream load generator failed for $d"
}
say "SSR: seed design (socket.io in the app process)"
start_seed
ssr_phase seed "$SEED_PORT" "$SEED_SOCK"
stop "$SEED_PID"
say "SSR: the same app behind sockgate"
start_app; start_sockgate $SG_PORT "http://127.0.0.1:$APP_PORT"
ssr_phase sockgate "$SG_PORT" "$SG_SOCK"
stop "$SG_PID" "$APP_PID"

# --- 3. proxy: fast upstream through sockgate vs nginx ----------------------------------------
say "proxy: sockgate vs nginx in front of a fast upstream"
taskset -c 1 "$LOADGEN" upstream --listen 127.0.0.1:$UP_PORT --max-secs 900 >"$OUT/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID"); wait_http "http://127.0.0.1:$UP_PORT/"
mkdir -p "$OUT/nginx/tmp"
cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/tmp/body;
  proxy_temp_path $OUT/nginx/tmp/proxy;
  fastcgi_temp_path $OUT/nginx/tmp/fastcgi;
  uwsgi_temp_path $OUT/nginx/tmp/uwsgi;
  scgi_temp_path $OUT/nginx/tmp/scgi;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
taskset -c 0 "$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" >>"$OUT/nginx/stdout.log" 2>&1 &
NGX_PID=$!; PIDS+=("$NGX_PID")
start_sockgate $SGP_PORT "http://127.0.0.1:$UP_PORT"
wait_http "http://127.0.0.1:$NGX_PORT/"; wait_http "http://127.0.0.1:$SGP_PORT/"
WRK_PROXY=(taskset -c 1 wrk -t1 -c64 -d"${WRK_SECS}s" --latency)
"${WRK_PROXY[@]}" "http://127.0.0.1:$UP_PORT/" >"$OUT/proxy-direct-1.txt"
for r in $(seq "$RUNS"); do
  "${WRK_PROXY[@]}" "http://127.0.0.1:$SGP_PORT/" >"$OUT/proxy-sockgate-$r.txt"
  "${WRK_PROXY[@]}" "http://127.0.0.1:$NGX_PORT/" >"$OUT/proxy-nginx-$r.txt"
done
stop "$SG_PID" "$NGX_PID" "$UP_PID"

# --- 3b. the app's page with sockgate on its own core -----------------------------------------
# The usual deployment on 2+ cores: the app on core 1, sockgate on core 0; wrk shares core 0
# with sockgate (which, if anything, handicaps sockgate). One warm-up round first.
say "SSR page: direct vs through sockgate, each on its own core"
APP_CPUS=1 start_app; start_sockgate $SG_PORT "http://127.0.0.1:$APP_PORT"
WRK_OWN=(taskset -c 0 wrk -t1 -c16 -d"${WRK_SECS}s" --latency)
"${WRK_OWN[@]}" "http://127.0.0.1:$SG_PORT/ssr" >/dev/null
for r in $(seq "$RUNS"); do
  "${WRK_OWN[@]}" "http://127.0.0.1:$APP_PORT/ssr" >"$OUT/page-own-direct-$r.txt"
  "${WRK_OWN[@]}" "http://127.0.0.1:$SG_PORT/ssr" >"$OUT/page-own-sockgate-$r.txt"
done
stop "$SG_PID" "$APP_PID"

# --- 4. cluster (optional: CLUSTER=1, ~15 min full, ~4 min with --quick) ---------------------
# sockgate's relay and adapter paths next to Node + @socket.io/redis-adapter, cross-instance
# (bench/cluster-cost.sh), then 1/2/3 instances (bench/cluster-scale.sh). Each script starts
# and stops its own processes and prints its table; both stay in $OUT/cluster-*/table.md
# (BENCHMARKS.md's cluster section is written by hand from them).
if [ "${CLUSTER:-0}" = 1 ]; then
  say "cluster: cross-instance cost, sockgate vs Node + redis-adapter"
  if [ "$QUICK" = 1 ]; then
    N=2000 SECS=3 LADDER_MAX=8000 LADDER_STEP=2000 FLOOD=10000 BENCH_OUT=$OUT/cluster-cost bench/cluster-cost.sh | tee -a "$LOG"
    say "cluster: 1/2/3 instances"
    N=2000 SECS=3 BCASTS=10 BENCH_OUT=$OUT/cluster-scale bench/cluster-scale.sh | tee -a "$LOG"
  else
    BENCH_OUT=$OUT/cluster-cost bench/cluster-cost.sh | tee -a "$LOG"
    say "cluster: 1/2/3 instances"
    BENCH_OUT=$OUT/cluster-scale bench/cluster-scale.sh | tee -a "$LOG"
  fi
fi

uptime >"$OUT/uptime-end.txt"
say "done measuring in $(( $(date +%s) - T0 )) s; writing BENCHMARKS.md"
python3 bench/report.py "$OUT" $([ "$QUICK" = 1 ] && echo --quick)
if [ "$QUICK" = 1 ]; then
  say "quick run: table above, also in $OUT/section.md (BENCHMARKS.md untouched)"
else
  say "results: BENCHMARKS.md, bench/chart.svg, bench/results.json; raw data in $OUT"
fi
