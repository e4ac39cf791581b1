#!/usr/bin/env bash
# CI smoke version of the benchmark: ~200 authenticated sockets against the debug sockgate and
# the benchmark's Node app, one broadcast and a few per-user publishes (singles and a batch).
# Exits non-zero unless every message reaches its socket. Finishes in well under 60 s.
#   bench/smoke.sh            (uses target/debug/sockgate; builds it and the loadgen if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SMOKE_SOCKETS:-200}

cargo build --quiet -p loadgen
[ -x target/debug/sockgate ] || cargo build --quiet --bin sockgate
LOADGEN=$PWD/target/debug/loadgen
SOCKGATE=$PWD/target/debug/sockgate

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
APP_PORT=$(free_port); SG_PORT=$(free_port)

PORT=$APP_PORT node bench/node-app/app.mjs >"$TMP/app.log" 2>&1 &
PIDS+=($!)
(cd "$TMP" && SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$SG_PORT \
  SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP_PORT SIDECAR_PUBLISH__SOCKET=$TMP/pub.sock \
  SIDECAR_LOG__FILTER=warn exec "$SOCKGATE" >"$TMP/sockgate.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 100); do
  [ -S "$TMP/pub.sock" ] && curl -fso /dev/null "http://127.0.0.1:$SG_PORT/hello" && break
  sleep 0.1
done
curl -fso /dev/null "http://127.0.0.1:$SG_PORT/hello" || { echo "smoke: sockgate or the app did not start" >&2; cat "$TMP"/*.log >&2; exit 1; }

if timeout 45 "$LOADGEN" smoke --addr "127.0.0.1:$SG_PORT" --publish-socket "$TMP/pub.sock" \
  --n "$N" --per-proc 150 --concurrency 64 --max-secs 40; then
  echo "smoke: passed"
else
  echo "smoke: FAILED" >&2
  tail -20 "$TMP/sockgate.log" >&2 || true
  exit 1
fi
