#!/usr/bin/env bash
# Issue 16, delivery shards: the events scenario with EVENTS_SHARDS = 0 (one namespace object
# delivers) and 4 (every subscription placed on a shard from the first event on:
# EVENTS_HOT_EVENTS = 1), with 1 and 8 subscriptions; strict durability, a fresh server and data
# directory per row, each pair run twice, alternating.
set -u
B=${B:-target/release}
BASE=$(mktemp /tmp/rkev-XXXX.toml)
$B/rookery-bench events-config > "$BASE"
for round in 1 2; do
  for n in 8 1; do
    for shards in 0 4; do
      CFG=$(mktemp /tmp/rkev-XXXX.toml)
      sed -e "s/^EVENTS_SHARDS = 0/EVENTS_SHARDS = $shards/" \
          -e "s/^EVENTS_HOT_EVENTS = 600/EVENTS_HOT_EVENTS = 1/" "$BASE" > "$CFG"
      D=$(mktemp -d /tmp/rkev.XXXX)
      $B/rookery serve --config "$CFG" --listen 127.0.0.1:8799 --data-dir $D/data --durability strict > $D/out 2> $D/err &
      PID=$!
      for i in $(seq 100); do grep -q listening $D/out 2>/dev/null && break; sleep 0.1; done
      echo "# round $round, shards $shards, subscriptions $n; uptime before: $(uptime)"
      $B/rookery-bench events --url http://127.0.0.1:8799 --subscriptions $n --events 5000 --conns 32
      echo "# exit $? uptime after: $(uptime)"
      echo "# subscriptions placed on shards (server log): $(cat $D/out $D/err | grep -c 'placing the subscription')"
      kill $PID; wait $PID; rm -rf $D "$CFG"
    done
  done
done
