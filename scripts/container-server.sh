#!/usr/bin/env bash
# The image as a server command for the conformance suite: `container-server.sh ARGS…` behaves
# as `mcq ARGS…` does, but the server runs in a container of mcq:latest.
#   ../shared/conformance/run -- scripts/container-server.sh
# - --network host: the suite's `-l 127.0.0.1 -p 0` is the host's loopback, and the listening
#   line on stdout names the port the suite connects to.
# - The suite makes its data directories, sockets and pid files under the host's temp dir, so
#   that directory is mounted at the same path, and the server runs as the caller's uid, the
#   owner of those directories. (The image's own user, 65532, on its /data volume, is what
#   scripts/container-test.ts checks.)
# - Signals: `docker run` forwards TERM and INT to the server and exits with its code. KILL
#   cannot be forwarded: it kills this client only, and the container goes on. So each
#   container carries the pid of its client, and a start first removes (docker rm -f, a kill -9)
#   every container whose client is gone, before a restart opens the same data directory.
set -euo pipefail
docker=${DOCKER:-docker}
image=${MCQ_IMAGE:-mcq}:latest
tmp=$(realpath "${TMPDIR:-/tmp}")
for id in $("$docker" ps -q --filter label=mcq-conformance); do
  client=$("$docker" inspect -f '{{index .Config.Labels "mcq-conformance"}}' "$id")
  kill -0 "$client" 2>/dev/null || "$docker" rm -f -v "$id" >/dev/null
done
exec "$docker" run --rm --network host --user "$(id -u):$(id -g)" --label "mcq-conformance=$$" \
  -v "$tmp:$tmp" "$image" "$@"
