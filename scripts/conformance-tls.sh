#!/usr/bin/env bash
# The conformance suite over a plain listener while another listener of the same server serves
# TLS (tracker 11): certificates made now by openssl; the suite adds its own -l 127.0.0.1 -p 0,
# a third listener, after ours, so the first listening line (the one it reads) is the plain one.
#   scripts/conformance-tls.sh <server command...>     e.g. scripts/conformance-tls.sh node_modules/.bin/bun src/main.ts
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$certs/key.pem" -out "$certs/cert.pem" \
  -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
"$here/../shared/conformance/run" -- "$@" -l notls:127.0.0.1 -l 127.0.0.1:0 -Z --tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem"
