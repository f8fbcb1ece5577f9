# The multi-stage image, for machines that can pull oven/bun and distroless: the compiled glibc
# binary on gcr.io/distroless/cc-debian12 (glibc, no shell), run as non-root (65532).
#   docker build -t mcq .     docker run -d -p 22201:22201 -v mcq-data:/data mcq
# Where no registry is reachable, `bun run image` (scripts/image.sh) builds the same image FROM
# scratch from dist/mcq-linux-x64; that one is what CI tests in a real engine (README: Containers).
FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN bun install --production --frozen-lockfile || bun install --production
COPY src ./src
COPY scripts/build.ts ./scripts/build.ts
COPY tsconfig.json ./
RUN bun scripts/build.ts && mkdir -p /data && chown 65532:65532 /data && chmod 0700 /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/dist/mcq /usr/local/bin/mcq
COPY --from=build --chown=65532:65532 /data /data
USER 65532:65532
# Settings as variables, not a CMD: arguments to `docker run` add to them (e.g. `mcq -v`)
# instead of replacing the listen address and the data directory.
ENV MCQ_LISTEN=0.0.0.0 MCQ_PORT=22201 MCQ_HOME=/data
VOLUME /data
EXPOSE 22201
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/local/bin/mcq", "health"]
ENTRYPOINT ["/usr/local/bin/mcq"]
