#!/usr/bin/env bash
# Compares two mcq source trees against memcached with mcbench (pair, 100-byte bodies), in one
# alternating run: for each round, each load, each server in turn. Prints the median of the
# rounds, in ops/s and as a ratio to memcached measured in the same round.
#
#   bash scripts/bench/compare.sh OLD_TREE [NEW_TREE] [ROUNDS] [SECONDS]
# OLD_TREE is a checkout of another revision (git worktree add /tmp/old <rev>), with node_modules.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
old=$(cd "$1" && pwd); new=$(cd "${2:-$here}" && pwd); rounds=${3:-3}; secs=${4:-3}
bun="$here/node_modules/.bin/bun"
mcbench=/tmp/mcbench
[ -x $mcbench ] || cc -O2 -o $mcbench "$here/scripts/bench/mcbench.c" -lpthread
command -v memcached >/dev/null || { echo "memcached is not installed (apt-get install memcached)"; exit 1; }
out=$(mktemp -d)

# serve NAME → starts a server, sets $pid and $port
serve() {
  local dir; dir=$(mktemp -d)
  case $1 in
    memcached) # a port nobody listens on (a taken one makes memcached exit, and this run with it)
       port=$((20000 + RANDOM % 20000)); while (: < /dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((20000 + RANDOM % 20000)); done
       memcached -p $port -U 0 -l 127.0.0.1 -t 2 -u root & pid=$!; sleep 0.3 ;;
    *) local tree sync; tree=$([ "${1%%-*}" = old ] && echo "$old" || echo "$new"); sync=${1#*-}
       "$bun" "$tree/src/main.ts" -p 0 -H "$dir" --sync "$sync" > "$dir/out" 2>&1 & pid=$!
       for _ in $(seq 200); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.05; done
       port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$dir/out" | grep -o '[0-9]*$') ;;
  esac
}

for r in $(seq "$rounds"); do
  for load in "1 1" "50 1" "50 16"; do
    set -- $load
    for s in memcached old-full new-full old-normal new-normal; do
      serve $s
      ops=$($mcbench -p "$port" -m pair -c "$1" -P "$2" -s 100 -d "$secs" -t 2 2>&1 | grep -o 'ops_s=[0-9]*' | cut -d= -f2)
      kill $pid; wait $pid 2>/dev/null || true
      echo "$1x$2 $s $ops" >> "$out/raw"
    done
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf "%-6s %-11s %10s %7s\n" load server ops/s ratio
for load in 1x1 50x1 50x16; do
  base=$(grep "^$load memcached " "$out/raw" | awk '{ print $3 }' | median)
  for s in memcached old-full new-full old-normal new-normal; do
    m=$(grep "^$load $s " "$out/raw" | awk '{ print $3 }' | median)
    printf "%-6s %-11s %10s %7.2f\n" "$load" "$s" "$m" "$(echo "$m / $base" | bc -l)"
  done
done
echo "raw: $out/raw"
