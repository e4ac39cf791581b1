#!/usr/bin/env bash
# Where a broadcast's CPU goes, per recipient, in one run:   bench/fanout-cost.sh [N]
#
# sockgate (release) on core 0, N idle authenticated WebSocket clients (bench/loadgen) and the
# bench app on core 1; ROUNDS broadcasts, 100 ms apart, each waited for until every socket has
# it. Then the floor (bench/floor: one pre-encoded frame written to N idle TCP sockets from one
# loop) with the same N and ROUNDS, writer on core 0, readers on core 1. For each: CPU µs per
# delivery (user, system, total), and syscalls per delivery from `perf stat` on the server
# process over the broadcasts only (sockgate: also its pings and pongs, ≈ N/25 a second).
# Bounded: each side stops by itself (--max-secs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-${N:-5000}}; ROUNDS=${ROUNDS:-30}
for tool in node taskset python3 curl perf; do
  command -v "$tool" >/dev/null || { echo "bench/fanout-cost.sh: '$tool' is required (apt-get install linux-perf for perf)" >&2; exit 2; }
done
cargo build --release --quiet -p sockgate -p loadgen -p floor
SOCKGATE=${SOCKGATE:-$ROOT/target/release/sockgate}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-fanout-XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; sleep 0.3; kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_for() { for _ in $(seq 600); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,context-switches
# perf stat -p PID until the file $2 appears; prints "event count" lines to $3.
# With PROFILE=dir, a CPU profile of sockgate over the same window instead of the counts
# (perf record; dir gets perf.data and a flat report, and a flame graph if inferno is installed).
perf_until() { # pid stop-file out
  if [ -n "${PROFILE:-}" ]; then
    perf record -F 1999 -g -o "$PROFILE/perf.data" -p "$1" 2>/dev/null &
  else
    perf stat -x, -e "$EVENTS" -p "$1" -o "$3" &
  fi
  local perf=$!
  wait_for "test -e $2"
  kill -INT "$perf"; wait "$perf" 2>/dev/null || true
}
# One row: name deliveries utime-ticks stime-ticks perf-file
row() {
  python3 - "$@" "$HZ" <<'PY'
import sys
name, n, ut, st, perf, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], float(sys.argv[6])
counts = {}
for line in open(perf):
    parts = line.strip().split(',')
    if len(parts) > 2 and parts[0].replace('.', '').isdigit():
        counts[parts[2].split(':')[-1]] = float(parts[0])
per = lambda k: counts.get(k, 0) / n
us = lambda t: t / hz * 1e6 / n
print(f"{name:<9} {n:>10} {us(ut):7.2f} {us(st):7.2f} {us(ut+st):7.2f} {per('sys_enter'):9.2f} {per('sys_enter_sendto') + per('sys_enter_write') + per('sys_enter_writev'):7.2f} {per('sys_enter_futex'):6.3f} {per('sys_enter_epoll_wait'):6.3f} {per('context-switches'):6.3f}")
PY
}

APP=$(free_port); SG=$(free_port)
PORT=$APP taskset -c 1 node bench/node-app/app.mjs >"$WORK/app.log" 2>&1 & PIDS+=($!)
wait_for "curl -fs http://127.0.0.1:$APP/hello"
(cd "$WORK" && exec env SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$SG SIDECAR_UPSTREAM__URL=http://127.0.0.1:$APP \
  SIDECAR_PUBLISH__SOCKET="$WORK/p.sock" SIDECAR_REALTIME__TRANSPORTS='["websocket"]' SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
  SIDECAR_LOG__FILTER=warn taskset -c 0 "$SOCKGATE" >"$WORK/sockgate.log" 2>&1) & PIDS+=($!); SGP=$!
wait_for "test -S $WORK/p.sock"

echo "fan-out cost, N=$N sockets, $ROUNDS broadcasts 100 ms apart; load: $(uptime | sed 's/.*load average: //')"
printf '%-9s %10s %7s %7s %7s %9s %7s %6s %6s %6s\n' "" deliveries user_us sys_us total_us syscalls writes futex epoll ctxsw
mkdir -p "$WORK/marks"
taskset -c 1 "$ROOT/target/release/loadgen" sockets --addr 127.0.0.1:$SG --publish-socket "$WORK/p.sock" \
  --server-pids "$SGP" --levels "$N" --broadcasts "$ROUNDS" --rate-search 0 --mark-dir "$WORK/marks" \
  --out "$WORK/sockets.json" --max-secs 300 2>>"$WORK/loadgen.log" & LG=$!; PIDS+=($LG)
wait_for "test -e $WORK/marks/broadcasts.start"
read -r u0 s0 < <(ticks "$SGP")
perf_until "$SGP" "$WORK/marks/broadcasts.end" "$WORK/perf-sockgate.txt"
read -r u1 s1 < <(ticks "$SGP")
wait "$LG"
delivered=$(python3 -c "import json,sys; l=json.load(open(sys.argv[1]))['levels'][0]; print(l['n']*$ROUNDS - l['bcast_lost'])" "$WORK/sockets.json")
kill "$SGP" 2>/dev/null || true
if [ -n "${PROFILE:-}" ]; then
  perf report -i "$PROFILE/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' >"$PROFILE/report.txt" || true
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$PROFILE/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "sockgate: broadcast to $N sockets" >"$PROFILE/fanout.svg" || true
  fi
  echo "profile of sockgate over the broadcasts: $PROFILE/report.txt"; exit 0
fi
row sockgate "$delivered" $((u1 - u0)) $((s1 - s0)) "$WORK/perf-sockgate.txt"

taskset -c 0 "$ROOT/target/release/floor" --n "$N" --rounds "$ROUNDS" --gap-ms 100 --max-secs 120 >"$WORK/floor.out" & FL=$!; PIDS+=($FL)
wait_for "grep -q listening $WORK/floor.out"
port=$(awk '/listening/ {print $2}' "$WORK/floor.out")
taskset -c 1 "$ROOT/target/release/floor" --connect "$port" --n "$N" --max-secs 120 >"$WORK/readers.out" & RD=$!; PIDS+=($RD)
wait_for "grep -q accepted $WORK/floor.out"
perf stat -x, -e "$EVENTS" -p "$FL" -o "$WORK/perf-floor.txt" & PF=$!
wait "$FL" || true
kill -INT "$PF" 2>/dev/null; wait "$PF" 2>/dev/null || true
wait "$RD" || true
python3 - "$WORK/floor.out" "$WORK/readers.out" "$WORK/perf-floor.txt" <<'PY'
import re, sys
out = open(sys.argv[1]).read(); got = open(sys.argv[2]).read()
m = re.search(r'deliveries=(\d+) user_us=([\d.]+) sys_us=([\d.]+) total_us=([\d.]+)', out)
n = int(m.group(1)); received = int(re.search(r'received (\d+)', got).group(1))
counts = {}
for line in open(sys.argv[3]):
    parts = line.strip().split(',')
    if len(parts) > 2 and parts[0].replace('.', '').isdigit():
        counts[parts[2].split(':')[-1]] = float(parts[0])
per = lambda k: counts.get(k, 0) / n
print(f"{'floor':<9} {n:>10} {float(m.group(2)):7.2f} {float(m.group(3)):7.2f} {float(m.group(4)):7.2f} {per('sys_enter'):9.2f} {per('sys_enter_sendto') + per('sys_enter_write') + per('sys_enter_writev'):7.2f} {per('sys_enter_futex'):6.3f} {per('sys_enter_epoll_wait'):6.3f} {per('context-switches'):6.3f}")
if received != n:
    print(f"floor: the readers got {received} of {n} frames", file=sys.stderr); sys.exit(1)
PY
echo "(floor syscalls include its accept phase's tail: perf attaches after the accepts, 1 s before the writes)"
