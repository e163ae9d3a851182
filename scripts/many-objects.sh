#!/usr/bin/env bash
# One counter-many run against a fresh server: prints req/s, p99 and the server's RSS, threads,
# descriptors and counters afterwards.
# usage: many-objects.sh ROOKERY_BIN BENCH_BIN OBJECTS REQUESTS LABEL [BENCH_ARGS...]
# (e.g. --warmup: every counter is made live before the measured run)
# ROOKERY_CONFIG=FILE: run the server with that configuration instead of the demo's
set -euo pipefail
bin=$1; bench=$2; objects=$3; requests=$4; label=$5
shift 5
port=$((20000 + RANDOM % 20000))
dir=$(mktemp -d /tmp/many-data.XXXX)
"$bin" serve ${ROOKERY_CONFIG:+--config "$ROOKERY_CONFIG"} --data-dir "$dir/data" --listen "127.0.0.1:$port" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "listening" "$dir/log" && break; sleep 0.1; done
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
load=$(cut -d' ' -f1-3 /proc/loadavg)
out=$("$bench" counter-many --url "http://127.0.0.1:$port" --objects "$objects" --requests "$requests" --conns 32 "$@" || true)
rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
thr=$(awk '/Threads/{print $2}' /proc/$pid/status)
fds=$(ls /proc/$pid/fd | wc -l)
stats=$(curl -s "http://127.0.0.1:$port/_rookery/stats" | head -c 400)
stop_start=$(date +%s)
kill -INT $pid; wait $pid || true
stop_s=$(( $(date +%s) - stop_start ))
rm -rf "$dir"
echo "$label objects=$objects requests=$requests load=[$load] rss0_kib=$rss0 rss_kib=$rss hwm_kib=$hwm threads=$thr fds=$fds stop_s=$stop_s"
echo "  stats=$stats"
echo "  out=$(echo "$out" | head -c 900)"
