# Multi-stage build of the coordinator (`unwind`) and the reference agent (`unwind-agent`).
# One image holds both: the coordinator is the default entrypoint; the agents of
# docker-compose.yml run the same image with `entrypoint: ["/usr/local/bin/unwind-agent"]`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# `-p` for each package: from the workspace root, cargo selects only the root package.
RUN cargo build --release --locked -p unwind -p unwind-agent --bin unwind --bin unwind-agent

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/unwind unwind \
    && mkdir -p /var/lib/unwind /var/lib/unwind-agent \
    && chown unwind /var/lib/unwind /var/lib/unwind-agent
COPY --from=build /src/target/release/unwind /usr/local/bin/unwind
COPY --from=build /src/target/release/unwind-agent /usr/local/bin/unwind-agent
USER unwind
WORKDIR /var/lib/unwind
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/unwind"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/unwind"]
