#!/usr/bin/env bash
# bun run image: the container image built from the compiled binary alone, with no base image
# and no network (no registry is needed, so it builds where nothing can be pulled).
#   1. a root filesystem: the linux-x64 binary as /mcq, exactly the libraries `ldd` names for
#      it, /data owned by 65532 (mode 0700), /tmp (1777), and an /etc/passwd naming 65532;
#   2. `docker build --network none` from a Dockerfile that starts FROM scratch; tags
#      mcq:latest and mcq:<version>; prints the size.
# The settings are MCQ_* variables in the image, not a CMD, so arguments given to `docker run`
# add to them instead of replacing the listen address and the data directory.
# Usage: scripts/image.sh [binary]   (default dist/mcq-linux-x64, built by `bun run build --all`)
# DOCKER names the docker client (default docker); MCQ_IMAGE the repository (default mcq).
set -euo pipefail
cd "$(dirname "$0")/.."
docker=${DOCKER:-docker}
repo=${MCQ_IMAGE:-mcq}
bin=${1:-dist/mcq-linux-x64}
if [ ! -x "$bin" ]; then
  echo "image: no executable $bin; build it first with: bun run build --all" >&2
  exit 1
fi
version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' package.json | head -1)
[ -n "$version" ] || { echo "image: no version in package.json" >&2; exit 1; }

work=$(mktemp -d /tmp/mcq-image-XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/data" "$root/tmp" "$root/etc"
cp "$bin" "$root/mcq"
# Exactly what the dynamic loader will look for: each path ldd prints, the loader included.
libs=$(ldd "$bin" | grep -oE '/[^ ]+' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
chown 65532:65532 "$root/data"
chmod 0700 "$root/data"
chmod 1777 "$root/tmp"
# Only for names in ps/ls inside the container; mcq itself never looks a user up.
echo "nonroot:x:65532:65532:mcq:/data:/sbin/nologin" >"$root/etc/passwd"
echo "nonroot:x:65532:" >"$root/etc/group"

# The root filesystem goes in as one tar, which ADD unpacks keeping each entry's owner and mode.
# (COPY would make /data root's, and a non-root server could not write to a fresh volume: a
# named volume starts as a copy of the image's /data, owner and mode included.)
tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
rm -rf "$root" # the engine gets only the tar and the Dockerfile
cat >"$work/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
USER 65532:65532
ENV MCQ_LISTEN=0.0.0.0 MCQ_PORT=22201 MCQ_HOME=/data
VOLUME /data
EXPOSE 22201
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["/mcq", "health"]
LABEL org.opencontainers.image.title="mcq" org.opencontainers.image.version="$version"
ENTRYPOINT ["/mcq"]
EOF

mb() { echo "$(($1 / 1000000)).$(($1 / 100000 % 10)) MB"; }
started=$(date +%s%N)
"$docker" build --network none -q -t "$repo:latest" -t "$repo:$version" "$work" >/dev/null
took=$((($(date +%s%N) - started) / 100000000))
size=$("$docker" image inspect -f '{{.Size}}' "$repo:latest")
echo "built $repo:latest and $repo:$version in $((took / 10)).$((took % 10)) s: $(mb "$size")" \
  "(the binary $(mb "$(stat -c %s "$bin")"), $(echo $libs | wc -w) libraries from ldd)"
