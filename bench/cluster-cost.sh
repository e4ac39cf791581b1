#!/usr/bin/env bash
# What a cross-instance message costs, sockgate vs the seed's plan, in one run:
#   bench/cluster-cost.sh
#
# Redis, the instances and the app share core 0; the load generator is on core 1. N sockets
# (one user each) connect to instance B; per-user messages are published through instance A's
# publish socket (POST /publish/batch, batches of 50), so every message crosses Redis. Configs
# (CONFIGS, in this order):
#   sockgate-1  one sockgate, no Redis (the single-instance reference; sockets and publishes on it)
#   relay       sockgate A + B, the relay (the default delivery path of kept messages)
#   relay-base  the same with BASELINE=/path/to/another/sockgate (e.g. main's release build), so two
#               builds are compared in one run; only with BASELINE set
#   relay-plain the relay with plain pub/sub (cluster.pubsub = "plain": PUBLISH/SUBSCRIBE, what a
#               Redis without sharded pub/sub gets); only when named in CONFIGS
#   adapter     sockgate A + B, the Socket.IO adapter path (what an older sockgate in the cluster
#               forces; emulated by one more subscriber of the adapter's request channel)
#   node-1      one Node socket.io 4.8 server (bench/node-socketio/server.mjs), no Redis
#   node        Node A + B with @socket.io/redis-adapter: A's publish socket calls
#               io.to('user:'+id).emit(...), the adapter PUBLISHes it, B delivers it
# sockgate keeps history (as shipped); Node has none. For each config, one after the other:
#   fixed      RATE msg/s for SECS
#   sustained  rates LADDER_STEP, 2×LADDER_STEP, … ≤ LADDER_MAX, STEP_SECS each: the highest
#              with every message delivered, ≥ 95 % of the pace kept and p50 ≤ P50_MS (a failed
#              step is retried once; LADDER_MAX=0 skips it)
#   flood      FLOOD messages as fast as one keep-alive connection publishes them (FLOOD=0 skips)
# CPU µs per message of A, B and Redis (schedstat of every thread; utime/stime split in the JSON)
# over each phase, after WARMUP s at RATE (not reported: Node's JIT, caches). Table on stdout
# and in $OUT/table.md; raw JSON in $OUT, with Redis's INFO commandstats per cluster config. Bounded: every
# phase has a count and a time limit, the load generator exits after 600 s whatever happens.
# For the relay configs, `perf stat -e instructions:u,instructions:k` on A over the whole run
# (warm-up included) goes to $OUT/<config>.perf (PERF=0 skips it).
source "$(dirname "$0")/cluster-lib.sh"
N=${N:-10000}; RATE=${RATE:-2000}; WARMUP=${WARMUP:-2}; SECS=${SECS:-8}
LADDER_MAX=${LADDER_MAX:-20000}; LADDER_STEP=${LADDER_STEP:-1000}; STEP_SECS=${STEP_SECS:-2}; P50_MS=${P50_MS:-5}
FLOOD=${FLOOD:-50000}
BASELINE=${BASELINE:-}
CONFIGS=${CONFIGS:-sockgate-1 ${BASELINE:+relay-base} relay adapter node-1 node}
PERF=${PERF:-1}
AP=$((BASE+3)); BP=$((BASE+4))
{ uptime; nproc; lscpu | sed -n 's/^Model name: *//p'; git rev-parse --short HEAD; } >"$OUT/machine.txt"
echo "cluster-cost: N=$N RATE=$RATE SECS=$SECS LADDER_MAX=$LADDER_MAX FLOOD=$FLOOD; load: $(uptime | sed 's/.*load average: //')" | tee "$OUT/params.txt"
ARGS=(--n "$N" --batch 50 --warmup-secs "$WARMUP" --rates "$RATE" --secs "$SECS" --ladder-start "$LADDER_STEP" --ladder-step "$LADDER_STEP"
  --ladder-max "$LADDER_MAX" --step-secs "$STEP_SECS" --p50-ms "$P50_MS" --flood "$FLOOD" --flood-secs 30)
for cfg in $CONFIGS; do
  echo "[$(date +%H:%M:%S)] $cfg (load $(uptime | sed 's/.*load average: //'))" >&2
  case $cfg in
    sockgate-1)
      start_app; start_sockgate a $AP 0; A=$LAST_PID
      run_loadgen "$OUT/$cfg.json" --addr 127.0.0.1:$AP --publish-socket "$WORK/a/p.sock" --server-pids "$A" "${ARGS[@]}" ;;
    relay|relay-base|relay-plain|adapter)
      bin=$SOCKGATE
      PUBSUB=; [ "$cfg" = relay-plain ] && PUBSUB=plain
      if [ "$cfg" = relay-base ]; then
        [ -x "$BASELINE" ] || { echo "$0: relay-base needs BASELINE=/path/to/sockgate" >&2; exit 2; }
        bin=$BASELINE
      fi
      start_redis; start_app
      start_sockgate a $AP 1 "$bin"; A=$LAST_PID
      start_sockgate b $BP 1 "$bin"; B=$LAST_PID
      wait_for "grep -q 'every instance relays' $WORK/b/log"
      if [ "$cfg" = adapter ]; then
        redis-cli -p $RP SSUBSCRIBE 'socket.io-request#/#' >/dev/null 2>&1 & PIDS+=($!)
        wait_for "grep -q 'older sockgate is connected' $WORK/a/log"
      fi
      sleep 1
      perf_pid=; [ "$PERF" = 1 ] && [ "$cfg" != adapter ] && perf_pid=$A
      PERF_PID=$perf_pid run_loadgen "$OUT/$cfg.json" --addr 127.0.0.1:$BP --publish-socket "$WORK/a/p.sock" --server-pids "$A,$B,$REDIS" "${ARGS[@]}" ;;
    node-1)
      start_node a $AP 0; A=$LAST_PID
      run_loadgen "$OUT/$cfg.json" --addr 127.0.0.1:$AP --publish-socket "$WORK/a/p.sock" --server-pids "$A" "${ARGS[@]}" ;;
    node)
      start_redis
      start_node a $AP 1; A=$LAST_PID
      start_node b $BP 1; B=$LAST_PID
      sleep 1
      run_loadgen "$OUT/$cfg.json" --addr 127.0.0.1:$BP --publish-socket "$WORK/a/p.sock" --server-pids "$A,$B,$REDIS" "${ARGS[@]}" ;;
    *) echo "unknown config $cfg" >&2; exit 2 ;;
  esac
  # Redis's own account of the commands it ran (calls, µs per call), for the cluster configs.
  [ "$cfg" = "${cfg%-1}" ] && redis-cli -p $RP INFO commandstats >"$OUT/$cfg-redis-commandstats.txt" 2>/dev/null
  stop_all
  sleep 1
done
uptime >>"$OUT/machine.txt"
python3 bench/cluster-report.py cost "$OUT" | tee "$OUT/table.md"
echo "load at end: $(uptime | sed 's/.*load average: //'); raw data in $OUT"
