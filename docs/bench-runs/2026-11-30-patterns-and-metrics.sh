#!/usr/bin/env bash
# Patterns (limiters, lock) and counter-one with metrics on/off, strict durability.
set -u
B=/work/bench-bin
OUT=/work/benchrun/out.txt
: > $OUT
start() { # $1 config-or-empty
  D=$(mktemp -d /tmp/rkb.XXXX); mkdir -p $D/data
  if [ -n "$1" ]; then CFG="--config $1"; else CFG=""; fi
  $B/rookery-s6 serve --listen 127.0.0.1:8787 --data-dir $D/data --durability strict $CFG > $D/out 2> $D/err &
  PID=$!
  for i in $(seq 100); do grep -q "listening" $D/out 2>/dev/null && break; sleep 0.1; done
}
stop() { kill $PID; wait $PID; rm -rf $D; }
echo "# $(date -u +%FT%TZ) commit $(git -C /work/main rev-parse --short HEAD) nproc $(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >> $OUT
for a in fixed-window sliding-window token-bucket leaky-bucket; do
  start ""
  $B/rookery-bench-s6 limiters --url http://127.0.0.1:8787 --algorithm $a --decisions 20000 --keys 100 --conns 32 >> $OUT
  stop
done
start ""; $B/rookery-bench-s6 lock --url http://127.0.0.1:8787 --pairs 10000 --locks 32 --conns 32 >> $OUT; stop
start ""; $B/rookery-bench-s6 lock --url http://127.0.0.1:8787 --pairs 2000 --locks 1 --conns 32 >> $OUT; stop
sed 's/^chat_page = true$/chat_page = true\nmetrics = false/' /work/main/examples/demo.toml > /work/benchrun/demo-nometrics.toml
grep -q "^metrics = false" /work/benchrun/demo-nometrics.toml || echo "NO METRICS-OFF CONFIG" >> $OUT
for round in 1 2 3; do
  for mode in on off; do
    if [ $mode = off ]; then start /work/benchrun/demo-nometrics.toml; else start /work/main/examples/demo.toml; fi
    echo "metrics=$mode round=$round load=$(cut -d' ' -f1 /proc/loadavg) metrics_status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8787/metrics)" >> $OUT
    $B/rookery-bench-s6 counter-one --url http://127.0.0.1:8787 --conns 32 --requests 50000 >> $OUT
    stop
  done
done
echo DONE >> $OUT
