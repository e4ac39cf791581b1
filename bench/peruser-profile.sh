#!/usr/bin/env bash
# Where a per-user message's cost goes (the /publish/batch path): the bench app and sockgate on
# core 0, `loadgen stream` on core 1 (N sockets, RATE messages/s in batches of BATCH, DUR s).
#   bench/peruser-profile.sh            perf profile of sockgate (DWARF call stacks) over 4 s:
#                                       $OUT/perf.data, $OUT/peruser.folded, $OUT/peruser.svg
#   CALLGRIND=1 bench/peruser-profile.sh  user-space instructions per message under callgrind
#                                       (use a small N and RATE: valgrind is ~50x slower)
# BIN=path picks the sockgate binary (default target/release/sockgate); OUT=dir (default a
# temporary directory, kept). Bounded: loadgen stops after DUR seconds; every process is stopped.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sockgate-peruser-XXXXXX")}; mkdir -p "$OUT"
APP=${APP_PORT:-27301}; SG=${SG_PORT:-27310}; BIN=${BIN:-$ROOT/target/release/sockgate}
rm -f "$OUT/sg.sock" "$OUT/ready" "$OUT/stop"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
PORT=$APP taskset -c 0 node bench/node-app/app.mjs >>"$OUT/app.log" 2>&1 & PIDS+=($!)
sleep 1.5
PRE=(); [ "${CALLGRIND:-0}" = 1 ] && PRE=(valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out")
SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$SG SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
  SIDECAR_PUBLISH__SOCKET="$OUT/sg.sock" SIDECAR_LOG__FILTER=warn SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
  SIDECAR_REALTIME__PING_INTERVAL_MS=600000 \
  taskset -c 0 "${PRE[@]}" "$BIN" >>"$OUT/sg.log" 2>&1 & SGPID=$!; PIDS+=($SGPID)
for _ in $(seq 300); do [ -S "$OUT/sg.sock" ] && curl -so /dev/null "http://127.0.0.1:$SG/" && break; sleep 0.1; done
taskset -c 1 "$ROOT/target/release/loadgen" stream --addr 127.0.0.1:$SG --publish-socket "$OUT/sg.sock" \
  --n "${N:-5000}" --rate "${RATE:-20000}" --batch "${BATCH:-100}" --duration "${DUR:-8}" \
  --stop-file "$OUT/stop" --ready-file "$OUT/ready" --out "$OUT/r.json" 2>"$OUT/loadgen.log" & LG=$!
for _ in $(seq 1200); do [ -e "$OUT/ready" ] && break; sleep 0.1; done
if [ "${CALLGRIND:-0}" = 1 ]; then
  vg=$(pgrep -f "callgrind-out-file=$OUT/cg.out" | head -1)
  callgrind_control -z "$vg" >/dev/null     # counts from here on: the stream only
  wait $LG; callgrind_control -d "$vg" >/dev/null
  python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]; d = json.load(open(f"{out}/r.json"))
ir = int(next(l for l in open(f"{out}/cg.out.1") if l.startswith("summary:")).split()[1])
print(f"sent {d['sent']}, delivered {d['delivered']}: {ir / d['sent']:.0f} user instructions per message")
PY
else
  sleep 1
  perf record -F 999 --call-graph dwarf,16384 -o "$OUT/perf.data" -p $SGPID -- sleep 4 >/dev/null 2>&1
  wait $LG
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"sent {d['sent']}, delivered {d['delivered']}, p50 {d['p50_us']} µs, p99 {d['p99_us']} µs\")" "$OUT/r.json"
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/peruser.folded"
    inferno-flamegraph --title "sockgate: per-user messages in batches of ${BATCH:-100}" <"$OUT/peruser.folded" >"$OUT/peruser.svg"
  fi
  echo "profile: $OUT/perf.data (flame graph: $OUT/peruser.svg)"
fi
