# A small ringlink image: the release binary on debian:bookworm-slim.
#   docker build -t ringlink .
# Run lines (NET_ADMIN, /dev/net/tun, the io_uring seccomp profile) are in
# the README, "Running it as a service".
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ringlink \
    && install -D -m 0755 target/release/ringlink /out/ringlink

FROM debian:bookworm-slim
COPY --from=build /out/ringlink /usr/bin/ringlink
COPY dist/config/client.toml.example dist/config/server.toml.example /etc/ringlink/
# The config is mounted at /etc/ringlink; the client makes /run/ringlink
# for its control socket (`docker exec ... ringlink status`).
ENTRYPOINT ["/usr/bin/ringlink"]
CMD ["client", "--config", "/etc/ringlink/client.toml"]
