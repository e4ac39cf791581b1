#!/usr/bin/env bash
# Where a proxied request's cost goes, sockgate vs nginx, side by side in one run:
#   bench/proxy-cost.sh [SOCKGATE_BINARY...]
# A fast upstream (`loadgen upstream`) and wrk (64 connections) on core 1; each proxy alone on
# core 0 (nginx: 1 worker, upstream keepalive 64). Prints, per proxy and run: req/s, CPU µs per
# request (utime+stime of the proxy process over the wrk run / requests), then syscalls and
# context switches per request (perf stat on the proxy's pid), with instructions per request
# (user, kernel) where the CPU exposes counters to perf, and the wake-ups of other tasks (the
# peers: wrk and the app) issued from the proxy's context. Several sockgate binaries (e.g. before
# and after a change) are measured in the same run. Bounded: RUNS × SECS per proxy.
# CALLGRIND=1 also counts each sockgate's user-space instructions per request under callgrind
# (valgrind), which needs no hardware counters (virtual machines often have none) and does not
# depend on what else runs on the machine: a few thousand requests, 8 connections, after a
# warm-up; about 30 s per binary.
# PROFILE=dir: then a CPU profile of each proxy under the same load (perf record, DWARF call
# stacks), its flat report and, with inferno installed, a flame graph per proxy in dir.
# A binary given as PATH@VAR=value,VAR=value runs with those variables set (e.g. the same build
# with SIDECAR_SERVER__RUNTIME=multi and without).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}; RUNS=${RUNS:-3}
for tool in wrk taskset perf python3; do
  command -v "$tool" >/dev/null || { echo "bench/proxy-cost.sh: '$tool' is required (apt-get install wrk linux-perf)" >&2; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "bench/proxy-cost.sh: nginx is required (apt-get install nginx-light)" >&2; exit 2; }
# LOADGEN=path uses a loadgen already built (a release build of it takes minutes on 2 cores).
if [ $# -eq 0 ]; then
  cargo build --release --quiet -p sockgate
  set -- "$PWD/target/release/sockgate"
fi
if [ -z "${LOADGEN:-}" ]; then
  cargo build --release --quiet -p loadgen
  LOADGEN=$PWD/target/release/loadgen
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-bench-XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; sleep 0.3; rm -rf "$WORK"' EXIT
UP=39301; NG=39302
taskset -c 1 "$LOADGEN" upstream --listen 127.0.0.1:$UP --max-secs 900 >/dev/null 2>&1 & PIDS+=($!)
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/b; proxy_temp_path $WORK/nginx/tmp/p; fastcgi_temp_path $WORK/nginx/tmp/f;
  uwsgi_temp_path $WORK/nginx/tmp/u; scgi_temp_path $WORK/nginx/tmp/s;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / {
    proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; } }
}
NGX
taskset -c 0 "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
NAMES=(nginx); declare -A PORT PID BINS
PORT[nginx]=$NG
i=0
for sg in "$@"; do
  i=$((i + 1)); name="sockgate#$i"; NAMES+=("$name"); PORT[$name]=$((39310 + i))
  mkdir -p "$WORK/$name"
  extra=(); bin=${sg%%@*}; [ "$bin" != "$sg" ] && IFS=, read -ra extra <<<"${sg#*@}"
  (cd "$WORK/$name" && exec env "${extra[@]}" SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=${PORT[$name]} \
    SIDECAR_UPSTREAM__URL=http://127.0.0.1:$UP SIDECAR_PUBLISH__SOCKET="$WORK/$name/p.sock" RUST_LOG=warn \
    taskset -c 0 "$bin" >"$WORK/$name/log" 2>&1) & PIDS+=($!); PID[$name]=$!
  BINS[$name]=$(basename "$sg")
  echo "sockgate#$i = $sg"
done
for _ in $(seq 50); do curl -fso /dev/null "http://127.0.0.1:$NG/" && break; sleep 0.1; done
sleep 1
PID[nginx]=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -1)
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$RUNS"); do
  for name in "${NAMES[@]}"; do
    c0=$(cpu "${PID[$name]}")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:${PORT[$name]}/" 2>&1)
    c1=$(cpu "${PID[$name]}")
    n=$(echo "$out" | awk '/requests in/{print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    printf '%-11s run %d: %8.0f req/s  %5.1f µs CPU/request\n' "$name" "$r" "$rps" \
      "$(python3 -c "print(($c1 - $c0) / $HZ * 1e6 / $n)")"
  done
done
echo "per request, under the same load (perf stat on the proxy process, 4 s):"
for name in "${NAMES[@]}"; do
  taskset -c 1 wrk -t1 -c64 -d6s "http://127.0.0.1:${PORT[$name]}/" >"$WORK/wrk.txt" 2>&1 & w=$!
  sleep 1
  perf stat -x, -e raw_syscalls:sys_enter,context-switches,sched:sched_wakeup,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,instructions:u,instructions:k \
    -p "${PID[$name]}" -- sleep 4 2>"$WORK/perf.txt" >/dev/null
  wait $w
  rps=$(awk '/Requests\/sec/{print $2}' "$WORK/wrk.txt")
  printf '%-11s' "$name"
  # Counters the machine lacks read "<not supported>" and are left out.
  awk -F, -v rps="$rps" '$1 ~ /^[0-9.]+$/ { n = $3; sub(/^syscalls:sys_enter_/, "", n); sub(/^raw_syscalls:sys_enter/, "syscalls", n); sub(/^sched:sched_wakeup/, "wake-ups", n);
    printf "  %s %.2f", n, $1 / (rps * 4) } END { print "" }' "$WORK/perf.txt"
done
if [ -n "${PROFILE:-}" ]; then
  # A CPU profile of each proxy under the same load, with call stacks unwound from DWARF CFI
  # (a release build keeps its unwind tables and symbols, and has no frame pointers), kernel
  # symbols included; flame graphs if inferno is installed (cargo install inferno).
  mkdir -p "$PROFILE"
  for name in "${NAMES[@]}"; do
    file=${name//#/}
    taskset -c 1 wrk -t1 -c64 -d6s "http://127.0.0.1:${PORT[$name]}/" >"$WORK/wrk.txt" 2>&1 & w=$!
    sleep 1
    perf record -F 499 --call-graph dwarf,16384 -o "$PROFILE/$file.data" -p "${PID[$name]}" -- sleep 4 >/dev/null 2>&1
    wait $w
    perf report -i "$PROFILE/$file.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$' >"$PROFILE/$file.txt" || true
    if command -v inferno-collapse-perf >/dev/null; then
      perf script -i "$PROFILE/$file.data" 2>/dev/null | inferno-collapse-perf | \
        inferno-flamegraph --title "$name ($([ "$name" = nginx ] && echo nginx || echo "${BINS[$name]}")): proxied GETs, wrk -c64" >"$PROFILE/$file.svg" || true
    fi
    echo "profile of $name: $PROFILE/$file.txt"
  done
  exit 0
fi
[ "${CALLGRIND:-0}" = 1 ] || exit 0
command -v valgrind >/dev/null || { echo "bench/proxy-cost.sh: CALLGRIND=1 needs valgrind (apt-get install valgrind)" >&2; exit 2; }
echo "user-space instructions per request under callgrind (8 connections, 6 s after a 3 s warm-up):"
i=0
for sg in "$@"; do
  i=$((i + 1)); port=$((39330 + i)); mkdir -p "$WORK/cg$i"
  extra=(); bin=${sg%%@*}; [ "$bin" != "$sg" ] && IFS=, read -ra extra <<<"${sg#*@}"
  (cd "$WORK/cg$i" && exec env "${extra[@]}" SIDECAR_SERVER__HOST=127.0.0.1 SIDECAR_SERVER__PORT=$port \
    SIDECAR_UPSTREAM__URL=http://127.0.0.1:$UP SIDECAR_PUBLISH__SOCKET="$WORK/cg$i/p.sock" RUST_LOG=warn \
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg$i/out" "$bin" >"$WORK/cg$i/log" 2>&1) & PIDS+=($!)
  for _ in $(seq 120); do curl -fso /dev/null "http://127.0.0.1:$port/" && break; sleep 0.5; done
  taskset -c 1 wrk -t1 -c8 -d3s "http://127.0.0.1:$port/" >/dev/null 2>&1
  vg=$(pgrep -f "callgrind-out-file=$WORK/cg$i/out" | head -1)
  callgrind_control -z "$vg" >/dev/null   # counts from here on: the requests below only
  out=$(taskset -c 1 wrk -t1 -c8 -d6s "http://127.0.0.1:$port/" 2>&1)
  callgrind_control -d "$vg" >/dev/null
  kill "$vg"
  n=$(echo "$out" | awk '/requests in/{print $1}')
  ir=$(awk '/^summary:/{print $2}' "$WORK/cg$i/out".*)
  printf 'sockgate#%d  %6d requests  %6.0f instructions/request\n' "$i" "$n" "$(python3 -c "print($ir / $n)")"
done
