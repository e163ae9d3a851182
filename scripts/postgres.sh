#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL on loopback for the cluster tests.
#
#   scripts/postgres.sh start DIR   initdb into DIR (as the `postgres` user), start on a free
#                                   port, wait until it answers; prints the URL
#   scripts/postgres.sh stop DIR    fast shutdown (nothing kept: DIR is the caller's to remove)
#
# Installs Debian's `postgresql` package when it is missing (as root), and fails if it cannot.
set -euo pipefail

cmd=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pgbin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && echo "$bin"
}

case "$cmd" in
start)
  if ! pgbin >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { echo "postgresql is missing and installing it needs root" >&2; exit 1; }
    apt-get update >&2
    apt-get install -y postgresql >&2
  fi
  bin=$(pgbin) || { echo "no PostgreSQL binaries under /usr/lib/postgresql" >&2; exit 1; }
  mkdir -p "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$dir"
  as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  # A free port: ask the kernel for one, then let PostgreSQL bind it.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c max_connections=200" -w -t 60 start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  for _ in $(seq 1 100); do
    if "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q; then
      echo "$port" >"$dir/port"
      echo "postgres://postgres@127.0.0.1:$port/postgres"
      exit 0
    fi
    sleep 0.1
  done
  echo "PostgreSQL did not answer on port $port" >&2
  exit 1
  ;;
stop)
  bin=$(pgbin) || exit 0
  [ -d "$dir/data" ] || exit 0
  as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  ;;
*)
  echo "usage: postgres.sh start|stop DIR" >&2
  exit 2
  ;;
esac
