# resilient-qa: the service and its upstream simulator in one small runtime image.
#   docker build -t resilient-qa .
#   docker run --rm -p 8080:8080 -e REDIS_URL=redis://host:6379 resilient-qa
#   docker run --rm -p 9090:9090 --entrypoint /usr/local/bin/upstream-sim resilient-qa --listen 0.0.0.0:9090

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change. Dummy targets stand in for the real sources (the bench target
# declared in Cargo.toml must exist for cargo to read the manifest; it is not built).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin benches \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/upstream-sim.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. COPY keeps their (older) mtimes, so touch them or cargo would keep the
# dummy builds of the three crate roots.
COPY src ./src
RUN touch src/lib.rs src/main.rs src/bin/upstream-sim.rs \
    && cargo build --release --locked \
    && cp target/release/resilient-qa target/release/upstream-sim /usr/local/bin/

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime

# Debian does not keep old package versions in its archive, so ca-certificates is unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app

COPY --from=builder /usr/local/bin/resilient-qa /usr/local/bin/upstream-sim /usr/local/bin/
WORKDIR /app
COPY config ./config

USER 10001:10001
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080

# No curl in the image: bash's /dev/tcp speaks HTTP/1.0 to /healthz and looks for 200 OK.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]

ENTRYPOINT ["/usr/local/bin/resilient-qa"]
