#!/usr/bin/env bash
# How a message's cost grows with the number of instances:   bench/cluster-scale.sh
#
# Same harness as bench/cluster-cost.sh (Redis, every instance and the app on core 0, the load
# generator on core 1). For K = 1, 2, 3 instances of each design (DESIGNS: sockgate, node — Node
# socket.io 4.8 with @socket.io/redis-adapter), all in cluster mode on one fresh Redis (K = 1
# too: one instance with Redis, what a cluster of one costs), N sockets spread evenly over the
# K instances (socket k on instance k mod K), messages published through instance 1:
#   per-user   RATE msg/s to random-ish users (user i, i+1, …) for SECS; (K−1)/K of them cross Redis
#   broadcast  BCASTS broadcasts to all N sockets, one at a time
# CPU µs per message (per recipient for broadcasts) of each instance and Redis, from schedstat,
# after WARMUP s at RATE (not reported).
# Table on stdout and in $OUT/table.md; raw JSON in $OUT. Bounded like cluster-cost.sh.
source "$(dirname "$0")/cluster-lib.sh"
N=${N:-6000}; RATE=${RATE:-2000}; WARMUP=${WARMUP:-2}; SECS=${SECS:-6}; BCASTS=${BCASTS:-20}
DESIGNS=${DESIGNS:-sockgate node}; COUNTS=${COUNTS:-1 2 3}
{ uptime; nproc; lscpu | sed -n 's/^Model name: *//p'; git rev-parse --short HEAD; } >"$OUT/machine.txt"
echo "cluster-scale: N=$N RATE=$RATE SECS=$SECS BCASTS=$BCASTS; load: $(uptime | sed 's/.*load average: //')" | tee "$OUT/params.txt"
for design in $DESIGNS; do
  for k in $COUNTS; do
    echo "[$(date +%H:%M:%S)] $design × $k (load $(uptime | sed 's/.*load average: //'))" >&2
    start_redis
    [ "$design" = sockgate ] && start_app
    addrs=(); pids=()
    for i in $(seq "$k"); do
      port=$((BASE+2+i))
      if [ "$design" = sockgate ]; then start_sockgate "i$i" $port 1; else start_node "i$i" $port 1; fi
      addrs+=("127.0.0.1:$port"); pids+=("$LAST_PID")
    done
    if [ "$design" = sockgate ]; then wait_for "grep -q 'every instance relays' $WORK/i$k/log"; fi
    sleep 1
    run_loadgen "$OUT/$design-$k.json" --addr "$(IFS=,; echo "${addrs[*]}")" --publish-socket "$WORK/i1/p.sock" \
      --server-pids "$(IFS=,; echo "${pids[*]}"),$REDIS" --n "$N" --batch 50 --warmup-secs "$WARMUP" --rates "$RATE" --secs "$SECS" \
      --broadcasts "$BCASTS"
    stop_all
    sleep 1
  done
done
uptime >>"$OUT/machine.txt"
python3 bench/cluster-report.py scale "$OUT" | tee "$OUT/table.md"
echo "load at end: $(uptime | sed 's/.*load average: //'); raw data in $OUT"
