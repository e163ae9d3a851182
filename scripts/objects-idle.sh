#!/usr/bin/env bash
# One objects-idle run against a fresh server: K counters made live (one increment each) and
# left idle; prints the bench's JSON line, then the server's RSS, threads and descriptors.
# usage: objects-idle.sh ROOKERY_BIN BENCH_BIN OBJECTS LABEL [EXTRA_SERVER_TOML_LINES]
set -euo pipefail
bin=$1; bench=$2; objects=$3; label=$4; extra=${5:-}
port=$((20000 + RANDOM % 20000))
dir=$(mktemp -d /tmp/idle-data.XXXX)
"$bench" objects-idle-config > "$dir/config.toml"
if [ -n "$extra" ]; then sed -i "s|^\[server\]|[server]\n$extra|" "$dir/config.toml"; fi
"$bin" serve --config "$dir/config.toml" --data-dir "$dir/data" --listen "127.0.0.1:$port" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "listening" "$dir/log" && break; sleep 0.1; done
load=$(cut -d' ' -f1-3 /proc/loadavg)
out=$("$bench" objects-idle --url "http://127.0.0.1:$port" --objects "$objects" --pid "$pid" || true)
rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
thr=$(awk '/Threads/{print $2}' /proc/$pid/status)
fds=$(ls /proc/$pid/fd | wc -l)
kill -INT $pid; wait $pid || true
du -sh "$dir/data" | cut -f1 > "$dir/du"
echo "$label objects=$objects load=[$load] rss_kib=$rss threads=$thr fds=$fds data=$(cat "$dir/du")"
echo "  $out"
rm -rf "$dir"
