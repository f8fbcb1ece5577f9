#!/usr/bin/env bash
# TLS against plain on one server, in one run (tracker 11): mcbench (scripts/bench/mcbench.c, the
# C generator the performance targets use) speaks no TLS, so it goes through Debian's stunnel4 in
# client mode. The server listens plain (notls:) and TLS at once; runs alternate.
#   scripts/bench-tls.sh [sync]      SECS=3 RUNS=3 LOAD="-c 50 -P 16" by default; sync full (default) or normal
set -euo pipefail
cd "$(dirname "$0")/.."
bun=${BUN:-node_modules/.bin/bun}
secs=${SECS:-3}
runs=${RUNS:-3}
load=${LOAD:--c 50 -P 16}
sync=${1:-full}
command -v stunnel4 >/dev/null || { echo "bench-tls: stunnel4 is missing (apt-get install stunnel4)" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
mcbench=$tmp/mcbench
cc -O2 -o "$mcbench" scripts/bench/mcbench.c -lpthread
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tmp/key.pem" -out "$tmp/cert.pem" \
  -days 2 -subj /CN=localhost 2>/dev/null

"$bun" src/main.ts -p 0 -H "$tmp/data" --sync "$sync" -l notls:127.0.0.1 -l 127.0.0.1:0 -Z --tls-cert "$tmp/cert.pem" \
  --tls-key "$tmp/key.pem" >"$tmp/out" 2>"$tmp/err" &
pids+=($!)
for _ in $(seq 100); do [ "$(grep -c 'listening on' "$tmp/out")" -ge 2 ] && break; sleep 0.1; done
plain=$(sed -n 1p "$tmp/out" | sed 's/.*://')
tls=$(sed -n 2p "$tmp/out" | sed 's/.*://')
front=$("$bun" -e 'const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }); console.log(l.port); l.stop(true)')
cat >"$tmp/stunnel.conf" <<CONF
foreground = yes
pid =
[mcq]
client = yes
accept = 127.0.0.1:$front
connect = 127.0.0.1:$tls
CONF
stunnel4 "$tmp/stunnel.conf" 2>"$tmp/stunnel.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$front") 2>/dev/null && break; sleep 0.1; done

run() { "$mcbench" -p "$1" -m pair -s 100 -q 1 $load -d "$secs" 2>/dev/null | grep -Eo 'ops_s=[0-9]+' | cut -d= -f2; }
p=(); t=()
for i in $(seq "$runs"); do
  if [ $((i % 2)) -eq 1 ]; then p+=("$(run "$plain")"); t+=("$(run "$front")"); else t+=("$(run "$front")"); p+=("$(run "$plain")"); fi
  echo "run $i: plain ${p[-1]} ops/s, TLS (stunnel4 -> mcq) ${t[-1]} ops/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
mp=$(median "${p[@]}"); mt=$(median "${t[@]}")
echo "pair ${load} -s 100, sync $sync, medians of $runs x ${secs}s: plain $mp ops/s, TLS $mt ops/s, TLS/plain $(awk "BEGIN { printf \"%.2f\", $mt / $mp }")"
