#!/usr/bin/env bash
# Issue 12: the queue features must not slow the hot path. mcbench pair (-c 50 -P 16) against a
# plain server and one with --max-deliveries 5 and a queue limit (--max-items), both from this
# tree, alternately, ROUNDS times; prints the medians and their ratio (target >= 0.9).
#   bash scripts/bench/features.sh [ROUNDS] [SECONDS]
#   STORE=postgres://… bash scripts/bench/features.sh …   the same on Postgres, a fresh schema per server
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-5}
mcbench=${MCBENCH:-/tmp/mcbench}
[ -x "$mcbench" ] || cc -O2 -o "$mcbench" scripts/bench/mcbench.c -lpthread
bun=node_modules/.bin/bun
SCHEMA_TAG=feat
# shellcheck source=store-schemas.sh
source scripts/bench/store-schemas.sh
out=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; drop_schemas; rm -rf "$out"' EXIT

# run NAME ARGS…: one fresh server, one mcbench run; appends "NAME ops/s" to $out/raw
run() {
  local name=$1
  shift
  rm -rf "$out/data"
  next_store
  "$bun" src/main.ts -p 0 -H "$out/data" "$@" "${store_args[@]}" >"$out/log" 2>&1 &
  pid=$!
  local port=""
  for _ in $(seq 100); do
    port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$out/log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "server did not start"; cat "$out/log"; exit 1; }
  ops=$("$mcbench" -p "$port" -m pair -c 50 -P 16 -s 100 -d "$secs" -t 2 2>&1 | grep -o 'ops_s=[0-9]*' | cut -d= -f2)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  echo "$name $ops" | tee -a "$out/raw"
}

for r in $(seq "$rounds"); do
  run plain
  run features --max-deliveries 5 --max-items 1000000
done
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
p=$(grep '^plain ' "$out/raw" | awk '{ print $2 }' | median)
f=$(grep '^features ' "$out/raw" | awk '{ print $2 }' | median)
printf 'median ops/s: plain %s, --max-deliveries 5 --max-items 1000000 %s, ratio %.3f\n' "$p" "$f" "$(echo "$f / $p" | bc -l)"
