#!/usr/bin/env bash
# Issue 12: a queue holding N delayed messages (default 1M) must not slow gets of due messages on
# other queues. Two servers from this tree, one empty and one holding N messages delayed by a
# day in the queue `parked`, are measured alternately with mcbench pair (-c 50 -P 16, other
# queues), ROUNDS times; prints the medians and their ratio.
#   bash scripts/bench/delayed.sh [N] [ROUNDS] [SECONDS]
#   STORE=postgres://… bash scripts/bench/delayed.sh …   the same on Postgres, a schema per server
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000000}
rounds=${2:-3}
secs=${3:-5}
mcbench=${MCBENCH:-/tmp/mcbench}
[ -x "$mcbench" ] || cc -O2 -o "$mcbench" scripts/bench/mcbench.c -lpthread
bun=node_modules/.bin/bun
SCHEMA_TAG=delayed
# shellcheck source=store-schemas.sh
source scripts/bench/store-schemas.sh
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; drop_schemas; rm -rf "$out"' EXIT

# start NAME: a server on a fresh data directory; its port in $out/NAME.port
start() {
  next_store
  "$bun" src/main.ts -p 0 -H "$out/$1" "${store_args[@]}" >"$out/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$out/$1.log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && { echo "$port" > "$out/$1.port"; return; }
    sleep 0.1
  done
  echo "server $1 did not start"; cat "$out/$1.log"; exit 1
}
start plain
start delayed
"$bun" scripts/bench/fill.ts "$(cat "$out/delayed.port")" "parked/delay=86400000" "$n"
printf 'stats queue parked\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$(cat "$out/delayed.port"); cat >&3; sleep 1; timeout 1 cat <&3" | tr -d '\r' | grep -E 'items|delayed' || true

for r in $(seq "$rounds"); do
  for s in plain delayed; do
    ops=$("$mcbench" -p "$(cat "$out/$s.port")" -m pair -c 50 -P 16 -s 100 -q 16 -d "$secs" -t 2 2>&1 | grep -o 'ops_s=[0-9]*' | cut -d= -f2)
    echo "round $r $s $ops" | tee -a "$out/raw"
  done
done
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
p=$(grep ' plain ' "$out/raw" | awk '{ print $4 }' | median)
d=$(grep ' delayed ' "$out/raw" | awk '{ print $4 }' | median)
printf 'median ops/s: plain %s, with %s delayed messages elsewhere %s, ratio %.3f\n' "$p" "$n" "$d" "$(echo "$d / $p" | bc -l)"
