# Builds meshgate and serves the bundled sample mesh. For real meshes, mount one and pass --mesh.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p meshgate

FROM debian:bookworm-slim
RUN useradd --system --home /srv/meshgate meshgate && mkdir -p /srv/meshgate && chown meshgate /srv/meshgate
COPY --from=build /src/target/release/meshgate /usr/local/bin/meshgate
USER meshgate
WORKDIR /srv/meshgate
EXPOSE 8815
ENTRYPOINT ["meshgate"]
CMD ["serve", "--listen", "0.0.0.0:8815", "--allow-plaintext"]
