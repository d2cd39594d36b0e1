# Builds meshgate. The image serves a mesh and an authentication configuration that you mount;
# without them it refuses to start and says what to mount (the sample mesh and its development
# users are never served off loopback):
#
#   docker run -p 8815:8815 -v $PWD/mesh:/mesh -v $PWD/config:/config meshgate
#
# with /config/auth.yaml (docs/security.md) and TLS files, or a TLS-terminating proxy in front.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p meshgate

FROM debian:bookworm-slim
RUN useradd --system --home /srv/meshgate meshgate && mkdir -p /srv/meshgate/audit && chown -R meshgate /srv/meshgate
COPY --from=build /src/target/release/meshgate /usr/local/bin/meshgate
USER meshgate
WORKDIR /srv/meshgate
EXPOSE 8815 8816
ENTRYPOINT ["meshgate"]
CMD ["serve", "--listen", "0.0.0.0:8815", "--http-listen", "0.0.0.0:8816", "--allow-plaintext", "--mesh", "/mesh", "--auth", "/config/auth.yaml", "--audit-log", "/srv/meshgate/audit"]
