#!/usr/bin/env bash
# What an idle authenticated WebSocket costs in memory, and where it goes:
#   bench/socket-memory.sh [N]      (default 5000)
#
# 1. RSS per socket: a release sockgate on core 0 with N idle authenticated sockets
#    (bench/loadgen, core 1), (RSS - RSS before) / N, as bench/run.sh measures it.
# 2. Where: the same under heaptrack with a `profiling` build (release without fat LTO, with
#    line tables; target/profiling/sockgate). sockgate is killed while the N sockets are
#    still open, so the trace's "leaked" allocations are what N idle sockets hold; the rows
#    are the allocation sites per socket (bench/heap-sites.py).
# A/B of builds: BINS="/tmp/sockgate-a /tmp/sockgate-b /tmp/sockgate-a /tmp/sockgate-b"
#    bench/socket-memory.sh N runs only step 1, once per listed binary (copies of
#    target/release/sockgate from each build, listed alternately), in one sitting.
# Needs heaptrack (apt-get install heaptrack). Bounded: loadgen stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-5000}
[ -n "${BINS:-}" ] || command -v heaptrack >/dev/null || { echo "bench/socket-memory.sh needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }
[ -d tests/fixture/node_modules/socket.io-client ] || (cd tests/fixture && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --quiet -p sockgate -p loadgen
[ -n "${BINS:-}" ] || cargo build --profile profiling --quiet -p sockgate
TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
APP=$(free_port); SG=$(free_port); SOCK=$TMP/publish.sock
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
PORT=$APP taskset -c 0 node bench/node-app/app.mjs >"$TMP/app.log" 2>&1 &
PIDS+=($!)

# run LABEL COMMAND...: sockgate (COMMAND: the binary, or heaptrack and the binary) with N idle
# sockets, loadgen's figures in $TMP/LABEL.json; sockgate is killed (-9) while they are open.
run() {
  local label=$1; shift
  rm -f "$SOCK"; rm -rf "$TMP/marks"; mkdir -p "$TMP/marks"
  (cd "$TMP" && SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$SG SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
    SIDECAR_PUBLISH__SOCKET=$SOCK SIDECAR_LOG__FILTER=warn SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
    exec taskset -c 0 "$@" >>"$TMP/sockgate.log" 2>&1) &
  local wrapper=$!; PIDS+=("$wrapper")
  for _ in $(seq 300); do [ -S "$SOCK" ] && curl -so /dev/null "http://127.0.0.1:$SG/" && break; sleep 0.1; done
  local pid; pid=$(pgrep -f "^${PGREP:-$ROOT/target/[a-z]*/sockgate}" | head -1)
  taskset -c 1 target/release/loadgen sockets --addr "127.0.0.1:$SG" --publish-socket "$SOCK" \
    --server-pids "$pid" --levels "$N" --broadcasts 1 --rate-search 0 --mark-dir "$TMP/marks" \
    --out "$TMP/$label.json" 2>>"$TMP/loadgen.log" &
  local loadgen=$!
  for _ in $(seq 1200); do [ -e "$TMP/marks/broadcasts.end" ] && break; sleep 0.1; done
  sleep 1
  kill -9 "$pid" 2>/dev/null || true
  wait "$loadgen" 2>/dev/null || true; wait "$wrapper" 2>/dev/null || true
}

rss() { python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["levels"][0]; print("RSS per idle authenticated socket, N = %d: %.2f KiB (%s)" % (l["n"], l["rss_per_socket_kib"], sys.argv[2]))' "$@"; }
if [ -n "${BINS:-}" ]; then
  i=0
  for bin in $BINS; do
    i=$((i + 1)); PGREP=$bin run "ab$i" "$bin"; rss "$TMP/ab$i.json" "$bin"
  done
  exit 0
fi
run release "$ROOT/target/release/sockgate"
rss "$TMP/release.json" "release build"

run heap heaptrack -o "$TMP/trace" "$ROOT/target/profiling/sockgate"
sleep 1
trace=$(ls "$TMP"/trace.* | head -1)
heaptrack_print -f "$trace" --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 1 \
  --peak-limit 200 --sub-peak-limit 200 2>/dev/null | python3 bench/heap-sites.py "$N" "${ROWS:-30}"
