# syntax=docker/dockerfile:1.7
#
# gatehouse — the PredictHealth edge gateway, as a container image.
#
#   docker build -t gatehouse .
#   docker run --rm -p 80:80 -e JWT_SECRET_KEY="$(openssl rand -hex 32)" gatehouse
#
# The image serves the public listener on port 80 and the admin listener (/health, /ready,
# /metrics) on 9091. Port 9091 is for probes and Prometheus on the internal network only:
# NEVER publish it publicly (`-p 9091:9091` on a public interface); it is unauthenticated.
#
# Needs BuildKit (the default builder since Docker 23): cache mounts for the cargo registry
# and the target directory, and a bind mount to install the binary with its capability in
# one layer. Settings are the seeds' environment variables (see .env.example and README
# "Docker"); the compose stack in docker-compose.yml wires them up.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------
# Build: release binary. Pingora needs cmake (zlib-ng) and a C compiler; aws-lc-rs needs
# cmake and clang or gcc.
# ---------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake clang pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# 1 keeps the release profile's line tables (file:line in backtraces, ~140 MB binary);
# the default strips them (function names stay, ~30 MB).
ARG KEEP_DEBUG_INFO=0

# target/ is a cache mount (kept between builds, absent from the layer), so the binary is
# copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/gatehouse /out/gatehouse \
 && if [ "$KEEP_DEBUG_INFO" != 1 ]; then strip --strip-debug /out/gatehouse; fi \
 && /out/gatehouse --version

# ---------------------------------------------------------------------------------------
# Runtime: Debian slim, non-root user, the binary and the files gateway.yaml refers to.
# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it (deploy/k8s/).
ARG GATEHOUSE_UID=10001
RUN groupadd --system --gid "${GATEHOUSE_UID}" gatehouse \
 && useradd --system --uid "${GATEHOUSE_UID}" --gid gatehouse --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin gatehouse \
 && install -d -o gatehouse -g gatehouse -m 0750 /var/lib/gatehouse

# Binding port 80 as a non-root user: the binary gets cap_net_bind_service as a file
# capability (libcap2-bin is only needed for setcap and is removed again). Installed from
# a bind mount of the build stage so the binary and its capability are one layer.
# If you drop ALL capabilities (docker --cap-drop=ALL, Kubernetes drop: [ALL]), add
# NET_BIND_SERVICE back: the kernel refuses to exec a binary whose file capability is
# outside the bounding set. Alternative: GATEHOUSE_LISTEN=0.0.0.0:8080 and publish 80:8080.
RUN --mount=type=bind,from=build,source=/out,target=/out \
    apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libcap2-bin \
 && install -m 0755 /out/gatehouse /usr/local/bin/gatehouse \
 && setcap cap_net_bind_service=+ep /usr/local/bin/gatehouse \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/gatehouse-healthcheck

WORKDIR /app
# templates/ and assets/ are resolved relative to the config file (/app/gateway.yaml).
# The binary embeds its migrations; migrations/ is shipped for reference only.
COPY templates/ /app/templates/
COPY assets/ /app/assets/
COPY migrations/ /app/migrations/
COPY gateway.yaml /app/gateway.yaml

# The default gateway.yaml reads these (README "Environment variables"). The admin listener
# is on all interfaces so that probes and Prometheus in other containers reach it: keep
# 9091 off public networks. DATABASE_URL defaults to an SQLite file in a writable
# directory so that a bare `docker run` starts; real deployments set postgres:// (and
# REDIS_URL, JWT_SECRET_KEY) as in docker-compose.yml.
ENV GATEHOUSE_LISTEN=0.0.0.0:80 \
    GATEHOUSE_ADMIN_LISTEN=0.0.0.0:9091 \
    DATABASE_URL=sqlite:///var/lib/gatehouse/gatehouse.db

# Fails the build if the shipped gateway.yaml does not validate against this binary.
RUN ["gatehouse", "check", "-c", "/app/gateway.yaml"]

USER ${GATEHOUSE_UID}:${GATEHOUSE_UID}

EXPOSE 80 9091

# Liveness via the admin listener's GET /health (bash /dev/tcp: the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["gatehouse-healthcheck"]

# SIGTERM: stop accepting, drain within server.grace_period (5 s), exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gatehouse"]
CMD ["run", "-c", "/app/gateway.yaml"]
