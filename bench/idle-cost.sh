#!/usr/bin/env bash
# What idle connections other than WebSockets cost sockgate: an HTTP keep-alive connection
# between requests, and a long-polling Socket.IO session (RSS growth per connection).
#   bench/idle-cost.sh [N]     (default 2000; needs target/release/sockgate and tests/fixture's npm ci)
# sockgate and the bench app on core 0, the clients on core 1; everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
ROOT=$PWD
[ -x target/release/sockgate ] || cargo build --release --quiet -p sockgate
[ -d tests/fixture/node_modules/socket.io-client ] || (cd tests/fixture && npm ci --no-audit --no-fund --loglevel=error)
TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
APP=$(free_port); SG=$(free_port)
PORT=$APP taskset -c 0 node bench/node-app/app.mjs >"$TMP/app.log" 2>&1 &
APID=$!
start_sockgate() {
  (cd "$TMP" && SIDECAR_SERVER__HOST=0.0.0.0 SIDECAR_SERVER__PORT=$SG SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
    SIDECAR_PUBLISH__SOCKET="$TMP/p.sock" SIDECAR_LOG__FILTER=warn SIDECAR_SERVER__HEADER_READ_TIMEOUT_MS=60000 \
    exec taskset -c 0 "$ROOT/target/release/sockgate" >>"$TMP/sockgate.log" 2>&1) &
  SPID=$!
  for _ in $(seq 100); do curl -fso /dev/null "http://127.0.0.1:$SG/hello" && return 0; sleep 0.1; done
  echo "sockgate did not start; see $TMP/sockgate.log" >&2; return 1
}
SPID=
trap 'kill $SPID $APID 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
ulimit -n "$(( 3 * N + 1000 > 20000 ? 20000 : 3 * N + 1000 ))"   # a polling client holds up to 2 connections
start_sockgate
taskset -c 1 python3 bench/idle/keepalive.py "$SG" "$SPID" "$N"
kill "$SPID"; wait "$SPID" 2>/dev/null || true
start_sockgate
taskset -c 1 node bench/idle/polling.mjs "http://127.0.0.1:$SG" "$SPID" "$N"
