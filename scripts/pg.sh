#!/usr/bin/env bash
# A throwaway real Postgres for tests and CI (Debian's `postgresql` package).
#   scripts/pg.sh start [DIR]  installs postgresql if missing, initdb into DIR (default: a new temp
#                              dir) as the `postgres` user (Postgres refuses root), starts it on a
#                              free port with its unix socket in DIR, and prints two lines:
#                              MCQ_TEST_PG=postgres://…  and  MCQ_TEST_PG_DIR=DIR
#   scripts/pg.sh stop DIR     stops it (fast shutdown) and removes DIR
# Use: eval "$(scripts/pg.sh start)"; export MCQ_TEST_PG; …; scripts/pg.sh stop "$MCQ_TEST_PG_DIR"
set -euo pipefail

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && { echo "$d"; return; }; done
  return 1
}

# Runs a command as the postgres user when we are root (Postgres refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin
  if ! bin=$(bindir); then
    echo "pg.sh: installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null) >&2
    bin=$(bindir) || { echo "pg.sh: postgresql is not installed and could not be installed" >&2; exit 1; }
  fi
  local dir=${1:-$(mktemp -d /tmp/mcq-pg.XXXXXX)}
  mkdir -p "$dir"
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  # fsync stays on: STORED means committed, and the tests kill processes, not the machine; the
  # shared machine is small, so connections and memory are kept modest.
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=64MB" start >&2 ||
    { cat "$dir/postgres.log" >&2; exit 1; }
  echo "MCQ_TEST_PG=postgres://postgres@127.0.0.1:$port/postgres"
  echo "MCQ_TEST_PG_DIR=$dir"
}

stop() {
  local dir=${1:?usage: pg.sh stop DIR} bin
  bin=$(bindir) || exit 0
  if [ -f "$dir/data/postmaster.pid" ]; then as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true; fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: scripts/pg.sh start [DIR] | stop DIR" >&2; exit 2 ;;
esac
