#!/usr/bin/env bash
# The container image in a real engine, for .ci/run (issue 14):
#   1. an engine: installs Debian's docker.io when docker or dockerd is missing, starts dockerd if
#      none answers (and stops it at the end if it started it);
#   2. builds the image (scripts/image.sh, from dist/mcq-linux-x64);
#   3. the conformance suite against the image (scripts/container-server.sh);
#   4. the container tests (scripts/container-test.ts): health, docker stop, --read-only,
#      extra arguments, bind-mount ownership, docker kill -s KILL under load then restart.
# Prints the suite's and bun test's own "N passed/failed" and "N pass/fail" lines, which
# .ci/run counts. The one case that skips, printing "skipped: …" and exiting 0, is an engine
# that cannot start for lack of privileges; anything else that goes wrong is a failure.
# Networking: --network host only; dockerd is started without a bridge or iptables rules.
set -uo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
bun=${BUN:-node_modules/.bin/bun}
export DOCKER=${DOCKER:-docker}
fail() { echo "== container: $1: 1 failed"; exit 1; }
timed() { local t0=$SECONDS; "$@"; local rc=$?; echo "== ($((SECONDS - t0)) s: $*)"; return $rc; }

if ! command -v "$DOCKER" >/dev/null || ! command -v dockerd >/dev/null; then
  echo "== installing docker.io"
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io >/dev/null) ||
    fail "cannot install docker.io"
fi

started=""
work=$(mktemp -d /tmp/mcq-engine-XXXXXX)
cleanup() {
  ids=$("$DOCKER" ps -aq --filter label=mcq-conformance 2>/dev/null)
  [ -z "$ids" ] || "$DOCKER" rm -f -v $ids >/dev/null 2>&1
  if [ -n "$started" ]; then
    kill -TERM "$started" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$started" 2>/dev/null || break; sleep 0.1; done
    echo "== stopped the dockerd this step started (pid $started)"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "== starting dockerd (no bridge, no iptables: the tests use --network host only)"
  dockerd --bridge=none --iptables=false --ip6tables=false >"$work/dockerd.log" 2>&1 &
  started=$!
  # Polled: dockerd says nothing on a pipe when it is ready; its API answering is the signal.
  for _ in $(seq 1 300); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$started" 2>/dev/null || break
    sleep 0.1
  done
  if ! "$DOCKER" info >/dev/null 2>&1; then
    tail -n 20 "$work/dockerd.log"
    denied=$(grep -iEm1 'permission denied|operation not permitted|root privileges|EPERM' "$work/dockerd.log")
    if [ "$(id -u)" != 0 ] || [ -n "$denied" ]; then
      started=""
      echo "skipped: the Docker engine cannot start here without privileges (uid $(id -u)): ${denied:-not root}"
      exit 0
    fi
    fail "dockerd did not start (log above)"
  fi
fi
"$DOCKER" version -f 'engine {{.Server.Version}}, client {{.Client.Version}}'

echo "== image"
[ -x dist/mcq-linux-x64 ] || fail "no dist/mcq-linux-x64 (bun run build --all first)"
timed bash scripts/image.sh || fail "the image did not build"

echo "== conformance: the image (scripts/container-server.sh)"
timed "$shared/conformance/run" -- scripts/container-server.sh
rc=$?

echo "== container tests (scripts/container-test.ts)"
timed "$bun" test ./scripts/container-test.ts || rc=1
exit $rc
