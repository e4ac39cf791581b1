# syntax=docker/dockerfile:1
# sockgate in front of a Node SSR app, in one container.
#
# Copy this file into your app's repository next to the sockgate source (or adapt the first
# stage to `cargo install --locked --git …`), then adjust the three lines marked ADAPT.
#
#   docker build -t myapp --build-arg ALLOWED_HOSTS=app.example.com .
#   docker run -p 3000:3000 -e PORT=3000 myapp
#
# .dockerignore keeps target/, .git and every node_modules/ and dist/ out of the context.
#
# Build context here: this repository, with the bundled Astro example as "your app".

# --- 1. sockgate: a release binary ----------------------------------------------------------
FROM rust:1-bookworm AS sockgate
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# engineioxide with sockgate's memory patches, used through [patch.crates-io].
COPY vendor ./vendor
# The workspace also lists the benchmark's load generator; cargo needs its manifest.
COPY bench/loadgen ./bench/loadgen
RUN cargo build --release --locked --bin sockgate \
 && strip target/release/sockgate

# --- 2. your app: install and build ----------------------------------------------------------
FROM node:20-bookworm-slim AS app
WORKDIR /app
# ADAPT: your app's package files and sources (here: the bundled example and its client
# packages, packed where its package.json expects them: file:../../target/packages/*.tgz).
COPY clients /clients
RUN mkdir -p /target/packages \
 && (cd /clients/react && npm ci --no-audit --no-fund && npm pack --pack-destination /target/packages) \
 && (cd /clients/node && npm pack --pack-destination /target/packages)
COPY examples/astro/package.json examples/astro/package-lock.json ./
RUN npm ci
# The sources after `npm ci`: .dockerignore leaves the host's node_modules/ and dist/ out, so
# the image's own dependencies are the ones built with.
COPY examples/astro/ ./
# ADAPT: the public hostnames your app answers (the example bakes them into Astro's
# security.allowedDomains at build time; a host missing there gets 403 on login).
ARG ALLOWED_HOSTS=""
RUN ALLOWED_HOSTS="$ALLOWED_HOSTS" npm run build && npm prune --omit=dev

# --- 3. runtime: Node + the app + sockgate ---------------------------------------------------
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PORT=3000 \
    SIDECAR_UPSTREAM__URL=http://127.0.0.1:4321 \
    SIDECAR_PUBLISH__SOCKET=/tmp/sockgate-node/sockgate.sock
# (sockgate creates that directory 0750 for the `node` user and refuses to start if it exists
# and belongs to someone else; the healthcheck below reads the same variable.)
WORKDIR /app
COPY --from=sockgate /src/target/release/sockgate /usr/local/bin/sockgate
COPY --from=app /app /app
# Optional: a sidecar.toml in /app is read automatically (env vars still win).
# COPY sidecar.toml ./
USER node
EXPOSE 3000
# Readiness over the publish socket: sockgate up, not draining, and the app answering.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "require('http').get({socketPath:process.env.SIDECAR_PUBLISH__SOCKET,path:'/readyz'},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]
# sockgate owns $PORT and starts the app with HOST=127.0.0.1 PORT=4321 SOCKGATE_SOCKET=...
# ADAPT: your app's start command after `--`.
CMD ["sockgate", "--", "node", "./dist/server/entry.mjs"]
