#!/usr/bin/env bash
# Extra rows for docs/BENCHMARKS.md (issue 16): one publishing connection (delivery keeps up),
# strict durability, a fresh server and data directory per row.
set -u
B=${B:-/work/target-evbench/release}
CFG=$(mktemp /tmp/rkev-XXXX.toml)
$B/rookery-bench events-config > "$CFG"
for n in 1 8; do
  D=$(mktemp -d /tmp/rkev.XXXX)
  $B/rookery serve --config "$CFG" --listen 127.0.0.1:8799 --data-dir $D/data --durability strict > $D/out 2> $D/err &
  PID=$!
  for i in $(seq 100); do grep -q listening $D/out 2>/dev/null && break; sleep 0.1; done
  echo "# uptime before: $(uptime)"
  $B/rookery-bench events --url http://127.0.0.1:8799 --subscriptions $n --events 2000 --conns 1
  echo "# exit $? uptime after: $(uptime)"
  kill $PID; wait $PID; rm -rf $D
done
