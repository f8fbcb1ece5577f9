#!/usr/bin/env bash
# The "minimal container" proof on a machine without a Docker engine: the linux-x64 binary
#  1. with no node_modules, no bun on PATH and an empty environment (env -i), and
#  2. in an empty root (chroot) holding only the binary and the libraries ldd lists for it,
# each passes the conformance suite. Needs root for chroot and a bind mount of /tmp (the suite
# creates its data directories there). Usage: scripts/minimal.sh [dist/mcq-linux-x64]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-dist/mcq-linux-x64}")
shared=${SHARED:-../shared}
work=$(mktemp -d /tmp/mcq-minimal-XXXXXX)
root=$work/root
cleanup() { umount "$root/tmp" "$root/proc" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# 1. A copy of the binary alone, run with an empty environment.
cp "$bin" "$work/mcq"
echo "== env -i $work/mcq (no node_modules, no bun, no PATH)"
env -i "$work/mcq" --version
"$shared/conformance/run" -- env -i "$work/mcq"

# 2. An empty root: the binary and what ldd lists, plus what any container runtime provides:
#    /proc (Bun reads /proc/self/exe to find its embedded code) and the basic /dev nodes.
if [ "$(id -u)" != 0 ]; then echo "chroot: skipped, needs root"; exit 0; fi
mkdir -p "$root/tmp" "$root/proc" "$root/dev"
cp "$bin" "$root/mcq"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
ldd "$bin" | grep -oE '/[^ ]+' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
echo "== chroot $root: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"
echo "== size of the root: $(du -sh "$root" | cut -f1)"
mount --bind /tmp "$root/tmp"
mount -t proc proc "$root/proc"
chroot "$root" /mcq --version
"$shared/conformance/run" -- chroot "$root" /mcq
