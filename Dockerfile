# Multi-stage build: compile with the Rust toolchain, run on a small Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p chatd && strip target/release/chatd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home chatd
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
ENV PORT=8000 HOST=0.0.0.0 LOG_FORMAT=json
EXPOSE 8000
# io_uring needs locked memory (512 KiB per core) and each connection a descriptor:
# run with e.g. --ulimit memlock=-1 --ulimit nofile=1048576.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chatd"]
