# Multi-stage build of the unwind binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin unwind

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/unwind unwind \
    && mkdir -p /var/lib/unwind && chown unwind /var/lib/unwind
COPY --from=build /src/target/release/unwind /usr/local/bin/unwind
USER unwind
WORKDIR /var/lib/unwind
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/unwind"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/unwind"]
