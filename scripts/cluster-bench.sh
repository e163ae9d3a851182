#!/usr/bin/env bash
# counter-many through 1, 2 and 3 cluster nodes on this machine, against one node without a
# cluster, with PostgreSQL's side of it (transactions and commit rows per second).
#
#   scripts/cluster-bench.sh ROOKERY_BIN BENCH_BIN [REQUESTS] [OBJECTS]
#
# Each run: a fresh database (and data directories), N nodes, N load generators at once (one
# per node, each on its own counters, REQUESTS/N increments over OBJECTS/N counters with
# 32/N connections, --warmup), so every counter lives on the node its load reaches. Prints one
# line per run: the summed rate, each generator's JSON outcome, and PostgreSQL's counts.
set -euo pipefail
bin=${1:?rookery binary}
bench=${2:?rookery-bench binary}
requests=${3:-20000}
objects=${4:-1000}
root=$(mktemp -d /tmp/rookery-cluster-bench.XXXXXX)
chmod 755 "$root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$(dirname "$0")/postgres.sh" stop "$root/pg" || true
  rm -rf "$root"
}
trap cleanup EXIT
url=$("$(dirname "$0")/postgres.sh" start "$root/pg")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node on $1 never got ready" >&2; return 1
}
pg_counts() {
  psql -At "$1" -c "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                           coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'rookery_commits'), 0)"
}
run() {
  local n=$1 label=$2
  local db="bench_${label}"
  psql -q "$url" -c "CREATE DATABASE $db" >/dev/null
  local dburl="${url%/*}/$db"
  local ports=() started=()
  for i in $(seq 1 "$n"); do
    local p; p=$(port)
    ports+=("$p")
    local args=(serve --listen "127.0.0.1:$p" --data-dir "$root/$label-$i" --durability strict)
    if [ "$label" != "single" ]; then
      args+=(--cluster "$dburl" --node-id "n$i" --advertise "http://127.0.0.1:$p")
    fi
    RUST_LOG=warn "$bin" "${args[@]}" >/dev/null 2>"$root/$label-$i.log" &
    pids+=($!); started+=($!)
  done
  for p in "${ports[@]}"; do wait_ready "$p"; done
  local before; before=$(pg_counts "$dburl")
  local t0; t0=$(date +%s.%N)
  local outs=()
  for i in $(seq 1 "$n"); do
    "$bench" counter-many --url "http://127.0.0.1:${ports[$((i-1))]}" --objects $((objects / n)) \
      --requests $((requests / n)) --conns $((32 / n)) --warmup >"$root/$label-out-$i.json" &
    outs+=($!)
  done
  for pid in "${outs[@]}"; do wait "$pid"; done
  local t1; t1=$(date +%s.%N)
  # Stopped first: a backend hands PostgreSQL its statistics when its connection ends.
  for pid in "${started[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
  sleep 1
  local after; after=$(pg_counts "$dburl")
  python3 - "$label" "$n" "$t0" "$t1" "$before" "$after" "$root"/"$label"-out-*.json <<'PY'
import json, sys
label, n, t0, t1, before, after, *files = sys.argv[1:]
outs = [json.loads(open(f).read().strip().splitlines()[-1]) for f in files]
rate = sum(o["figures"]["throughput"] for o in outs)
p99 = max(o["figures"]["latency"]["p99_ms"] for o in outs)
p50 = max(o["figures"]["latency"]["p50_ms"] for o in outs)
ok = all(o["ok"] for o in outs)
wall = float(t1) - float(t0)
bx, bi = (int(x) for x in before.split("|"))
ax, ai = (int(x) for x in after.split("|"))
print(json.dumps({"run": label, "nodes": int(n), "req_per_s": round(rate), "p50_ms_max": p50,
                  "p99_ms_max": p99, "all_ok": ok, "wall_s_incl_warmup": round(wall, 2),
                  "pg_xacts": ax - bx, "pg_commit_rows": ai - bi,
                  "pg_rows_per_xact": round((ai - bi) / max(ax - bx, 1), 1),
                  "pg_xacts_per_s": round((ax - bx) / wall)}))
PY
}
echo "# $(date -u +%FT%TZ) $(git -C "$(dirname "$0")/.." rev-parse --short HEAD) requests=$requests objects=$objects load=$(cut -d' ' -f1-3 /proc/loadavg)"
run 1 single
run 1 c1
run 2 c2
run 3 c3
