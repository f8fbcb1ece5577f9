# A minimal image: the compiled glibc binary on distroless (glibc, no shell), run as non-root.
# Build: docker build -t mcq .     Run: docker run -p 22201:22201 -v mcq-data:/data mcq
FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN bun install --production --frozen-lockfile || bun install --production
COPY src ./src
COPY scripts ./scripts
COPY tsconfig.json ./
RUN bun scripts/build.ts && mkdir -p /data && chown 65532:65532 /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/dist/mcq /usr/local/bin/mcq
COPY --from=build --chown=65532:65532 /data /data
USER 65532:65532
VOLUME /data
EXPOSE 22201
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mcq"]
CMD ["-l", "0.0.0.0", "-H", "/data"]
