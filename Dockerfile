# syntax=docker/dockerfile:1
# corral in a container. corral itself is PID 1 (ENTRYPOINT): `corral serve` notices
# getpid() == 1 and splits into a tiny init loop that reaps every zombie (the tmux server and
# what agents double-fork end up as its children) and forwards SIGTERM & co. to the daemon,
# which it re-executes as its child. So no `--init`, tini or dumb-init is needed; to run some
# other command as PID 1, use `corral init -- CMD`.
#
#   docker build -t corral .                                  # where a Docker engine exists
#   docker build -t corral --build-arg INSTALL_CLAUDE=true --build-arg INSTALL_CODEX=true .
#   docker run -d -p 127.0.0.1:8001:8001 -e CORRAL_SERVER_TOKEN=... corral
# See README.md ("Container") and docker-compose.yml.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts keep the crate registry and the build directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin corral \
 && install -D -m 0755 target/release/corral /out/corral

FROM ${RUNTIME_IMAGE}
# npm-install the agent CLIs (with Debian's node and npm) when set to "true".
ARG INSTALL_CLAUDE=false
ARG INSTALL_CODEX=false
ARG CLAUDE_PACKAGE=@anthropic-ai/claude-code
ARG CODEX_PACKAGE=@openai/codex
# tmux: the default backend; git: workspaces; procps: ps/pgrep for operators; curl: the
# HEALTHCHECK.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends tmux git ca-certificates procps curl; \
    if [ "$INSTALL_CLAUDE" = true ] || [ "$INSTALL_CODEX" = true ]; then \
      apt-get install -y --no-install-recommends nodejs npm; \
      if [ "$INSTALL_CLAUDE" = true ]; then npm install -g "$CLAUDE_PACKAGE"; fi; \
      if [ "$INSTALL_CODEX" = true ]; then npm install -g "$CODEX_PACKAGE"; fi; \
      npm cache clean --force; \
    fi; \
    rm -rf /var/lib/apt/lists/*

# The non-root user corral (and so its agents) runs as; volumes are owned by it.
RUN set -eux; \
    groupadd --gid 1000 corral; \
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/corral --shell /bin/bash corral; \
    install -d -o corral -g corral -m 0750 /data /logs /workspaces; \
    install -d -o corral -g corral -m 0700 /run/corral

COPY --from=build /out/corral /usr/local/bin/corral

# Every setting is an environment variable (CONFIG.md). Listening on all addresses requires
# a token: set CORRAL_SERVER_TOKEN, or CORRAL_SERVER_TOKEN_FILE=/run/secrets/<name>.
ENV CORRAL_PATHS_STATE_DIR=/data \
    CORRAL_PATHS_DATA_DIR=/data \
    CORRAL_PATHS_LOG_DIR=/logs \
    CORRAL_PATHS_WORKSPACE_ROOT=/workspaces \
    CORRAL_PATHS_RUN_DIR=/run/corral \
    CORRAL_SERVER_HOST=0.0.0.0 \
    CORRAL_SERVER_PORT=8001 \
    NO_COLOR=1 \
    HOME=/home/corral

VOLUME ["/data", "/logs", "/workspaces"]
USER corral
WORKDIR /workspaces
EXPOSE 8001
# /health needs no token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${CORRAL_SERVER_PORT}/health" >/dev/null || exit 1
# The default SIGTERM starts corral's ordered shutdown; give it shutdown.grace_s + 5 s
# (`docker stop -t 30`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["corral"]
CMD ["serve"]
