#!/usr/bin/env bash
# Where a broadcast's CPU goes, per recipient, in one run:   bench/fanout-cost.sh [N [SOCKGATE_BINARY...]]
#
# sockgate (release) on core 0, N idle authenticated WebSocket clients (bench/loadgen) and the
# bench app on core 1; ROUNDS broadcasts, 100 ms apart, each waited for until every socket has
# it. Then the floor (bench/floor: one pre-encoded frame written to N idle TCP sockets from one
# loop) with the same N and ROUNDS, writer on core 0, readers on core 1. For each: CPU µs per
# delivery (user, system, total), and syscalls per delivery from `perf stat` on the server
# process over the broadcasts only (sockgate: also its pings and pongs, ≈ N/25 a second).
# Several sockgate binaries (e.g. OLD and NEW) are measured one after the other in the same run,
# each with a fresh app and fresh clients, then the floor once. With IR=1 each binary is also run
# under callgrind (ROUNDS_IR broadcasts, default 5; instrumented during the broadcasts only)
# for its user-space instructions per delivery (`perf stat -e instructions:u` where the machine
# has hardware counters; this one, a VM, does not).
# With BATCH=1, also the per-user publish path for each binary: BATCH_N sockets (1000), the app
# publishing batches of 100 messages to one user each (`loadgen stream`) at BATCH_RATE messages/s
# (5000) for BATCH_SECS (10); CPU µs of sockgate per message (user, system) over that window.
# A binary given as PATH@VAR=value,VAR=value runs with those variables set.
# Bounded: each side stops by itself (--max-secs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-${N:-5000}}; ROUNDS=${ROUNDS:-30}; ROUNDS_IR=${ROUNDS_IR:-5}
[ $# -gt 0 ] && shift
for tool in node taskset python3 curl perf; do
  command -v "$tool" >/dev/null || { echo "bench/fanout-cost.sh: '$tool' is required (apt-get install linux-perf for perf)" >&2; exit 2; }
done
if [ -n "${IR:-}" ]; then
  command -v callgrind_control >/dev/null || { echo "bench/fanout-cost.sh: IR=1 needs valgrind" >&2; exit 2; }
fi
if [ $# -eq 0 ]; then
  cargo build --release --quiet -p sockgate -p loadgen -p floor
  set -- "${SOCKGATE:-$ROOT/target/release/sockgate}"
else
  cargo build --release --quiet -p loadgen -p floor
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-fanout-XXXXXX")
PIDS=()
trap 'set +e; kill "${PIDS[@]}" 2>/dev/null; sleep 0.3; kill -9 "${PIDS[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_for() { for _ in $(seq 600); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,context-switches
# perf stat -p PID until the file $2 appears; prints "event count" lines to $3.
# With PROFILE=dir (and one binary), a CPU profile (kernel symbols included) of sockgate over
# the same window instead of the counts, then of the floor over its writes (perf record; dir
# gets perf.data, floor.data and their flat reports, and flame graphs if inferno is installed).
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

# One sockgate binary with its own app and clients: run_sockgate NAME BINARY ROUNDS [ir].
# Prints its row; with `ir`, runs it under callgrind and prints its instructions per delivery.
run_sockgate() {
  local name=$1 bin=$2 rounds=$3 mode=${4:-} dir="$WORK/$1${4:-}" app sg sgp lg delivered
  local extra=() realbin=${2%%@*}; [ "$realbin" != "$2" ] && IFS=, read -ra extra <<<"${2#*@}"; bin=$realbin
  mkdir -p "$dir/marks"
  app=$(free_port); sg=$(free_port)
  PORT=$app taskset -c 1 node bench/node-app/app.mjs >"$dir/app.log" 2>&1 & PIDS+=($!); local appp=$!
  wait_for "curl -fs http://127.0.0.1:$app/hello"
  local wrap=()
  [ "$mode" = ir ] && wrap=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out")
  (cd "$dir" && exec env "${extra[@]}" SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$sg SIDECAR_UPSTREAM__URL=http://127.0.0.1:$app \
    SIDECAR_PUBLISH__SOCKET="$dir/p.sock" SIDECAR_REALTIME__TRANSPORTS='["websocket"]' SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
    SIDECAR_LOG__FILTER=warn taskset -c 0 "${wrap[@]}" "$bin" >"$dir/sockgate.log" 2>&1) & PIDS+=($!); sgp=$!
  wait_for "test -S $dir/p.sock"
  taskset -c 1 "$ROOT/target/release/loadgen" sockets --addr 127.0.0.1:$sg --publish-socket "$dir/p.sock" \
    --server-pids "$sgp" --levels "$N" --broadcasts "$rounds" --rate-search 0 --mark-dir "$dir/marks" \
    --out "$dir/sockets.json" --max-secs 600 2>>"$dir/loadgen.log" & lg=$!; PIDS+=($lg)
  wait_for "test -e $dir/marks/broadcasts.start"
  if [ "$mode" = ir ]; then
    callgrind_control -i on "$sgp" >/dev/null 2>&1
    wait_for "test -e $dir/marks/broadcasts.end"
    callgrind_control -i off "$sgp" >/dev/null 2>&1
  else
    read -r u0 s0 < <(ticks "$sgp")
    perf_until "$sgp" "$dir/marks/broadcasts.end" "$dir/perf-sockgate.txt"
    read -r u1 s1 < <(ticks "$sgp")
  fi
  wait "$lg" || { echo "$name: loadgen failed: $(tail -2 "$dir/loadgen.log")" >&2; exit 1; }
  delivered=$(python3 -c "import json,sys; l=json.load(open(sys.argv[1]))['levels'][0]; print(l['n']*$rounds - l['bcast_lost'])" "$dir/sockets.json")
  kill "$sgp" "$appp" 2>/dev/null || true
  wait "$sgp" 2>/dev/null || true
  if [ "$mode" = ir ]; then
    # Instructions executed in sockgate's user space while instrumentation was on.
    local ir
    ir=$(awk '/^totals:/ {print $2}' "$dir/callgrind.out")
    printf '%-9s %10s %14s\n' "$name" "$delivered" "$(python3 -c "print(f'{$ir / $delivered:.0f}')")"
    return
  fi
  if [ -n "${PROFILE:-}" ]; then
    perf report -i "$PROFILE/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' >"$PROFILE/report.txt" || true
    if command -v inferno-collapse-perf >/dev/null; then
      perf script -i "$PROFILE/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "sockgate: broadcast to $N sockets" >"$PROFILE/fanout.svg" || true
    fi
    echo "profile of $name over the broadcasts: $PROFILE/report.txt"
    return
  fi
  row "$name" "$delivered" $((u1 - u0)) $((s1 - s0)) "$dir/perf-sockgate.txt"
}

echo "fan-out cost, N=$N sockets, $ROUNDS broadcasts 100 ms apart; load: $(uptime | sed 's/.*load average: //')"
i=0; for bin in "$@"; do i=$((i + 1)); [ $# -gt 1 ] && echo "sg$i = $bin"; done
printf '%-9s %10s %7s %7s %7s %9s %7s %6s %6s %6s\n' "" deliveries user_us sys_us total_us syscalls writes futex epoll ctxsw
i=0
for bin in "$@"; do
  i=$((i + 1)); name=sockgate; [ $# -gt 1 ] && name=sg$i
  run_sockgate "$name" "$bin" "$ROUNDS"
done

taskset -c 0 "$ROOT/target/release/floor" --n "$N" --rounds "$ROUNDS" --gap-ms 100 --max-secs 120 >"$WORK/floor.out" & FL=$!; PIDS+=($FL)
wait_for "grep -q listening $WORK/floor.out"
port=$(awk '/listening/ {print $2}' "$WORK/floor.out")
taskset -c 1 "$ROOT/target/release/floor" --connect "$port" --n "$N" --max-secs 120 >"$WORK/readers.out" & RD=$!; PIDS+=($RD)
wait_for "grep -q accepted $WORK/floor.out"
if [ -n "${PROFILE:-}" ]; then
  perf record -F 1999 -g -o "$PROFILE/floor.data" -p "$FL" 2>/dev/null & PF=$!
else
  perf stat -x, -e "$EVENTS" -p "$FL" -o "$WORK/perf-floor.txt" & PF=$!
fi
wait "$FL" || true
kill -INT "$PF" 2>/dev/null; wait "$PF" 2>/dev/null || true
wait "$RD" || true
if [ -n "${PROFILE:-}" ]; then
  perf report -i "$PROFILE/floor.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' >"$PROFILE/floor-report.txt" || true
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$PROFILE/floor.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "floor: one frame to $N sockets" >"$PROFILE/floor.svg" || true
  fi
  echo "profile of the floor over its writes: $PROFILE/floor-report.txt"; exit 0
fi
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
if [ -n "${IR:-}" ]; then
  echo "user-space instructions per delivery (callgrind, $ROUNDS_IR broadcasts, N=$N):"
  i=0
  for bin in "$@"; do
    i=$((i + 1)); name=sockgate; [ $# -gt 1 ] && name=sg$i
    run_sockgate "$name" "$bin" "$ROUNDS_IR" ir
  done
fi
# One binary's per-user batches: run_batches NAME BINARY.
# With IR=1 it also runs each binary under callgrind (instrumented over the stream) and adds
# the instructions per message.
run_batches() {
  local name=$1 bin=$2 mode=${3:-} dir="$WORK/$1-batch${3:-}" app sg sgp lg wrap=()
  local extra=() realbin=${2%%@*}; [ "$realbin" != "$2" ] && IFS=, read -ra extra <<<"${2#*@}"; bin=$realbin
  [ "$mode" = ir ] && wrap=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out")
  mkdir -p "$dir"
  app=$(free_port); sg=$(free_port)
  PORT=$app taskset -c 1 node bench/node-app/app.mjs >"$dir/app.log" 2>&1 & PIDS+=($!); local appp=$!
  wait_for "curl -fs http://127.0.0.1:$app/hello"
  (cd "$dir" && exec env "${extra[@]}" SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$sg SIDECAR_UPSTREAM__URL=http://127.0.0.1:$app \
    SIDECAR_PUBLISH__SOCKET="$dir/p.sock" SIDECAR_REALTIME__TRANSPORTS='["websocket"]' SIDECAR_AUTH__REVALIDATE_INTERVAL_MS=0 \
    SIDECAR_LOG__FILTER=warn taskset -c 0 "${wrap[@]}" "$bin" >"$dir/sockgate.log" 2>&1) & PIDS+=($!); sgp=$!
  wait_for "test -S $dir/p.sock"
  taskset -c 1 "$ROOT/target/release/loadgen" stream --addr 127.0.0.1:$sg --publish-socket "$dir/p.sock" \
    --n "${BATCH_N:-1000}" --rate "${BATCH_RATE:-5000}" --batch 100 --duration "${BATCH_SECS:-10}" \
    --ready-file "$dir/ready" --stop-file "$dir/never" --out "$dir/stream.json" 2>>"$dir/loadgen.log" & lg=$!; PIDS+=($lg)
  wait_for "test -e $dir/ready"
  [ "$mode" = ir ] && callgrind_control -i on "$sgp" >/dev/null 2>&1
  read -r u0 s0 < <(ticks "$sgp")
  wait "$lg"
  read -r u1 s1 < <(ticks "$sgp")
  [ "$mode" = ir ] && callgrind_control -i off "$sgp" >/dev/null 2>&1
  kill "$sgp" "$appp" 2>/dev/null || true
  if [ "$mode" = ir ]; then
    wait "$sgp" 2>/dev/null || true
    python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['sent']; print(f'{sys.argv[2]:<9} {s:>10} {int(sys.argv[3]) / s:14.0f}')" \
      "$dir/stream.json" "$name" "$(awk '/^totals:/ {print $2}' "$dir/callgrind.out")"
    return
  fi
  python3 - "$name" "$dir/stream.json" $((u1 - u0)) $((s1 - s0)) "$HZ" <<'PY'
import json, sys
name, out, ut, st, hz = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
us = lambda t: t / hz * 1e6 / out['sent']
print(f"{name:<9} {out['sent']:>10} {out['delivered']:>10} {us(ut):7.2f} {us(st):7.2f} {us(ut + st):7.2f} {out['p50_us'] / 1e3:8.2f}")
PY
}
if [ -n "${BATCH:-}" ]; then
  echo "per-user batches of 100: ${BATCH_N:-1000} sockets, ${BATCH_RATE:-5000} messages/s for ${BATCH_SECS:-10} s; CPU per message"
  printf '%-9s %10s %10s %7s %7s %7s %8s\n' "" sent delivered user_us sys_us total_us p50_ms
  i=0
  for bin in "$@"; do
    i=$((i + 1)); name=sockgate; [ $# -gt 1 ] && name=sg$i
    run_batches "$name" "$bin"
  done
  if [ -n "${IR:-}" ]; then
    echo "user-space instructions per message (callgrind):"
    i=0
    for bin in "$@"; do
      i=$((i + 1)); name=sockgate; [ $# -gt 1 ] && name=sg$i
      run_batches "$name" "$bin" ir
    done
  fi
fi
