#!/usr/bin/env bash
# The SSR page direct vs through sockgate when each has its own core — the usual deployment
# on a machine with 2+ cores: the Node app on core 1, sockgate on core 0 (wrk shares core 0,
# which handicaps sockgate if anything). bench/run.sh measures the other case, both on one core.
# Three rounds, wrk -c16 for 4 s each; prints req/s and latency per round.
#   bench/page-overhead.sh        (needs target/release/sockgate: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "page-overhead: install wrk (apt-get install wrk)" >&2; exit 2; }
[ -x target/release/sockgate ] || cargo build --release --quiet -p sockgate
TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
APP=$(free_port); SG=$(free_port)
PORT=$APP taskset -c 1 node bench/node-app/app.mjs >"$TMP/app.log" 2>&1 &
APID=$!
BIN=$PWD/target/release/sockgate
(cd "$TMP" && SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$SG SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
  SIDECAR_PUBLISH__SOCKET="$TMP/p.sock" SIDECAR_LOG__FILTER=warn exec taskset -c 0 "$BIN") &
SPID=$!
trap 'kill $SPID $APID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do curl -fso /dev/null "http://127.0.0.1:$SG/ssr" && break; sleep 0.1; done
for round in 1 2 3; do
  for target in "direct $APP" "through-sockgate $SG"; do
    set -- $target
    line=$(taskset -c 0 wrk -t1 -c16 -d4s --latency "http://127.0.0.1:$2/ssr" 2>/dev/null \
      | awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} END{printf "%s req/s  p50 %s  p99 %s", rps, p50, p99}')
    printf 'round %d  %-17s %s\n' "$round" "$1" "$line"
  done
done
