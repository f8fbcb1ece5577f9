#!/usr/bin/env bash
# Issue 15, design (a): what moving SQLite's commits into a Worker can gain at most, measured on
# the idealised server scripts/bench/minimal-durable.ts, against mcq and memcached, with mcbench
# (pair, 100-byte bodies) in one alternating run: for each round, each load, each server in turn.
# Prints the median of the rounds: ops/s, the ratio to memcached of the same round, the server's
# CPU per request (main thread, the thread named "Worker", the whole process, from /proc), and for
# minimal-durable the requests per batch and the time from closing a batch to its replies. An
# fdatasync probe (4 KB appends in the run's directory) says how fast the disk was, before and after.
#
#   bash scripts/bench/overlap.sh [ROUNDS] [SECONDS] [SERVERS...]
#   bash scripts/bench/overlap.sh --summary RAW    the table again from a run's raw file
# SERVERS (all by default): memcached mcq-full mcq-normal minimal main-full main-normal
#   worker2-full worker2-normal worker1-full worker1-normal (workerN: --inflight N)
#   redis-everysec redis-always (redis-server with AOF, driven by redis-benchmark -t lpush,rpop at the
#   same connections and pipeline; its rate is the pair rate 2 / (1/lpush + 1/rpop), as in bun run bench)
# A round that failed (a server that did not start, mcbench errors) is left out of the medians.
set -euo pipefail

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
summary() { # RAW → the medians, servers in the order they ran
  local raw=$1 load s base m
  col() { grep "^$1 $2 " "$raw" | awk -v c="$3" '$3 > 0 { print $c }' | median; }
  printf "%-6s %-15s %6s %9s %6s %9s %9s %9s %8s %9s\n" load server rounds ops/s ratio main_us worker_us proc_us req/batch durable_us
  for load in 1x1 50x1 50x16; do
    base=$(col $load memcached 3)
    for s in $(awk '!seen[$2]++ { print $2 }' "$raw"); do
      m=$(col $load $s 3)
      [ -n "$m" ] || continue
      printf "%-6s %-15s %6s %9s %6.2f %9s %9s %9s %8s %9s\n" "$load" "$s" "$(grep -c "^$load $s [1-9]" "$raw")" "$m" "$(echo "$m / $base" | bc -l)" \
        "$(col $load $s 4)" "$(col $load $s 5)" "$(col $load $s 6)" "$(col $load $s 7)" "$(col $load $s 8)"
    done
  done
}
if [ "${1:-}" = --summary ]; then summary "$2"; exit 0; fi

here=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-3}; secs=${2:-3}; shift $(( $# < 2 ? $# : 2 ))
servers=${*:-memcached mcq-full mcq-normal minimal main-full main-normal worker2-full worker2-normal worker1-full worker1-normal}
bun="$here/node_modules/.bin/bun"
mcbench=/tmp/mcbench
[ -x $mcbench ] || cc -O2 -o $mcbench "$here/scripts/bench/mcbench.c" -lpthread
command -v memcached >/dev/null || { echo "memcached is not installed (apt-get install memcached)"; exit 1; }
out=$(mktemp -d)

probe() { # mean fdatasync latency of 4 KB appends, in us
  "$bun" -e 'const fs = require("fs"); const f = process.argv[1] + "/fsync-probe"; const fd = fs.openSync(f, "w"); const b = Buffer.alloc(4096, 1);
    const t = performance.now(); for (let i = 0; i < 200; i++) { fs.writeSync(fd, b); fs.fdatasyncSync(fd); }
    console.log(Math.round((performance.now() - t) * 1000 / 200)); fs.closeSync(fd); fs.rmSync(f)' "$out"
}

ticks() { # PID → CPU ticks (1/100 s) of its main thread, of its thread named Worker, of the process
  local pid=$1 t main=0 worker=0 f
  for t in /proc/"$pid"/task/*; do
    f=($(sed 's/^.*) //' "$t/stat" 2>/dev/null)) || continue
    [ "${t##*/}" = "$pid" ] && main=$(( f[11] + f[12] ))
    [ "$(cat "$t/comm" 2>/dev/null)" = Worker ] && worker=$(( worker + f[11] + f[12] ))
  done
  f=($(sed 's/^.*) //' /proc/"$pid"/stat))
  echo "$main $worker $(( f[11] + f[12] ))"
}

# redis_pair CONNS DEPTH → redis-benchmark's LPUSH and RPOP on $port as one mcbench-like RESULT line (pair rate);
# redis-benchmark runs a count, not a time: the count aims at about $secs seconds at rates seen on this machine
redis_pair() {
  local n out lp rp
  n=$(( $([ "${s#redis-}" = always ] && echo 1500 || echo 15000) * secs * $2 * ($1 > 1 ? 2 : 1) ))
  out=$(redis-benchmark -p "$port" -c "$1" -P "$2" -d 100 -t lpush,rpop -n "$n" -q 2>/dev/null | tr '\r' '\n')
  lp=$(grep -o 'LPUSH: [0-9.]*' <<< "$out" | tail -1 | cut -d' ' -f2); rp=$(grep -o 'RPOP: [0-9.]*' <<< "$out" | tail -1 | cut -d' ' -f2)
  [ -n "$lp" ] && [ -n "$rp" ] && echo "RESULT ops=$(( 2 * n )) ops_s=$(echo "2 / (1 / $lp + 1 / $rp)" | bc -l | cut -d. -f1) errors=0"
}

# serve NAME → starts a server, sets $pid, $port and $dir
serve() {
  dir=$(mktemp -d -p "$out")
  case $1 in
    memcached) # a port nobody listens on (a taken one makes memcached exit)
       port=$((20000 + RANDOM % 20000)); while (: < /dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((20000 + RANDOM % 20000)); done
       memcached -p $port -U 0 -l 127.0.0.1 -t 2 -u root & pid=$!; sleep 0.3; return ;;
    mcq-*) "$bun" "$here/src/main.ts" -p 0 -H "$dir" --sync "${1#mcq-}" > "$dir/out" 2> "$dir/err" & pid=$! ;;
    minimal) "$bun" "$here/scripts/bench/minimal.ts" -p 0 > "$dir/out" 2> "$dir/err" & pid=$! ;;
    main-*) "$bun" "$here/scripts/bench/minimal-durable.ts" -H "$dir" --durable main --sync "${1#*-}" > "$dir/out" 2> "$dir/err" & pid=$! ;;
    worker*) local n=${1%%-*}; n=${n#worker}
       "$bun" "$here/scripts/bench/minimal-durable.ts" -H "$dir" --durable worker --inflight "$n" --sync "${1#*-}" > "$dir/out" 2> "$dir/err" & pid=$! ;;
    redis-*) port=$((20000 + RANDOM % 20000)); while (: < /dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((20000 + RANDOM % 20000)); done
       redis-server --port $port --bind 127.0.0.1 --save "" --appendonly yes --appendfsync "${1#redis-}" --dir "$dir" > /dev/null & pid=$!
       for _ in $(seq 100); do (: < /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done; return ;;
    *) echo "unknown server $1"; exit 2 ;;
  esac
  for _ in $(seq 200); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.05; done
  port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$dir/out" | grep -o '[0-9]*$')
}

echo "fdatasync before: $(probe) us" | tee "$out/probe"
for r in $(seq "$rounds"); do
  for load in "1 1" "50 1" "50 16"; do
    set -- $load
    for s in $servers; do
      serve $s
      before=($(ticks $pid 2>/dev/null || echo 0 0 0))
      if [ "${s%%-*}" = redis ]; then result=$(redis_pair "$1" "$2"); else
      result=$($mcbench -p "${port:-1}" -m pair -c "$1" -P "$2" -s 100 -d "$secs" -t 2 2>&1 | grep RESULT || true); fi
      after=($(ticks $pid 2>/dev/null || echo 0 0 0))
      kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
      ops=$(grep -o ' ops=[0-9]*' <<< "$result" | cut -d= -f2 || true); ops_s=$(grep -o 'ops_s=[0-9]*' <<< "$result" | cut -d= -f2 || true)
      grep -q ' errors=0' <<< "$result" || { echo "round $r: $s at $1x$2 failed, left out: ${result:-no result}"; ops_s=0; ops=0; }
      us() { [ "${ops:-0}" -gt 0 ] && echo "scale=2; ($2 - $1) * 10000 / $ops" | bc || echo 0; }
      # minimal-durable says on SIGTERM: "N batches, X requests, ... a batch; Y us from closing a batch to its replies"
      batch=$(grep -o '[0-9.]* requests' "$dir/err" 2>/dev/null | cut -d' ' -f1 || true); wait_us=$(grep -o '[0-9]* us from' "$dir/err" 2>/dev/null | cut -d' ' -f1 || true)
      echo "$1x$2 $s ${ops_s:-0} $(us ${before[0]} ${after[0]}) $(us ${before[1]} ${after[1]}) $(us ${before[2]} ${after[2]}) ${batch:--} ${wait_us:--}" >> "$out/raw"
      rm -rf "$dir"
    done
  done
  echo "round $r done; fdatasync: $(probe) us" | tee -a "$out/probe"
done

summary "$out/raw"
cat "$out/probe"
echo "raw: $out/raw"
