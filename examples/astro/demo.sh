#!/usr/bin/env bash
# One command from a fresh clone: builds what is missing, then runs the Astro example behind
# sockgate in supervisor mode (sockgate starts the app, owns the public port, answers
# /socket.io/ and proxies the rest). Ctrl-C stops both.
#
#   ./examples/astro/demo.sh            # http://localhost:3000, this machine only
#   PORT=8080 ./examples/astro/demo.sh
#   HOST=0.0.0.0 ./examples/astro/demo.sh   # reachable from other machines too
#
# Environment:
#   HOST             address sockgate listens on (default 127.0.0.1: the demo app logs anyone
#                    in as alice or bob without a password, so it is not exposed unless asked)
#   PORT             public port (default 3000)
#   UPSTREAM_PORT    where the app listens, on 127.0.0.1 (default 4321)
#   SOCKGATE_SOCKET  publish socket path (default: sockgate's own, $XDG_RUNTIME_DIR/sockgate/sockgate.sock
#                    or /tmp/sockgate-<uid>/sockgate.sock: a private per-user directory)
#   SOCKGATE_BIN     use this sockgate binary instead of building target/release/sockgate
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$APP_DIR/../.." && pwd)"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-3000}"
UPSTREAM_PORT="${UPSTREAM_PORT:-4321}"
if [ -n "${XDG_RUNTIME_DIR:-}" ]; then DEFAULT_SOCK="$XDG_RUNTIME_DIR/sockgate/sockgate.sock"
else DEFAULT_SOCK="/tmp/sockgate-$(id -u)/sockgate.sock"; fi
SOCK="${SOCKGATE_SOCKET:-$DEFAULT_SOCK}"

say() { if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "Node.js 20.3+ is required (https://nodejs.org)"
command -v npm >/dev/null 2>&1 || die "npm is required (it comes with Node.js)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=3)?0:1)' \
  || die "Node.js 20.3+ is required, found $(node --version)"
[ "$PORT" != "$UPSTREAM_PORT" ] || die "PORT and UPSTREAM_PORT must differ (both are $PORT)"

# "$1" is missing, or a file under the other arguments is newer than it.
stale() {
  local target="$1"; shift
  [ -e "$target" ] || return 0
  [ -n "$(find "$@" -newer "$target" -type f -print -quit 2>/dev/null)" ]
}

# 1. npm dependencies of the example. @sockgate/client and @sockgate/react are installed from
#    their tarballs, packed into target/packages/ from clients/ (a new tarball: npm ci again).
say "npm pack clients/node clients/react"
"$ROOT/clients/pack.sh"
if [ ! -d "$APP_DIR/node_modules" ] \
    || stale "$APP_DIR/node_modules/.package-lock.json" "$APP_DIR/package-lock.json" "$ROOT/target/packages"; then
  say "npm ci in examples/astro"
  (cd "$APP_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi

# 2. The Astro build (dist/), when missing or older than its sources.
if stale "$APP_DIR/dist/server/entry.mjs" "$APP_DIR/src" "$APP_DIR/astro.config.mjs" \
    "$APP_DIR/node_modules/.package-lock.json"; then
  say "npm run build in examples/astro"
  (cd "$APP_DIR" && ASTRO_TELEMETRY_DISABLED=1 npm run build --silent)
fi

# 3. sockgate, when missing or older than its sources.
if [ -n "${SOCKGATE_BIN:-}" ]; then
  BIN="$SOCKGATE_BIN"
  [ -x "$BIN" ] || die "SOCKGATE_BIN=$BIN is not an executable"
else
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
  BIN="$TARGET_DIR/release/sockgate"
  if stale "$BIN" "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock"; then
    command -v cargo >/dev/null 2>&1 || die "Rust is required to build sockgate: https://rustup.rs"
    say "cargo build --release (the first build takes a few minutes)"
    (cd "$ROOT" && cargo build --release --bin sockgate)
  fi
fi

# 4. Run sockgate; it starts the app (HOST=127.0.0.1 PORT=$UPSTREAM_PORT) and, on SIGTERM,
#    drains before stopping it. sockgate runs in its own process group (set -m), so Ctrl-C
#    reaches only this script, which forwards a single SIGTERM: otherwise the terminal would
#    SIGINT the app directly and kill it before sockgate has drained.
cd "$APP_DIR"
export SOCKGATE_SOCKET="$SOCK" # read by the app's pushNotification (src/lib/socket-server.ts)

if [ -t 1 ]; then bold=$'\033[1;32m' reset=$'\033[0m'; else bold='' reset=''; fi
printf '\n%s  Open http://localhost:%s — log in as alice or bob, click "Notify me"%s\n' "$bold" "$PORT" "$reset"
printf '  (use a second browser or a private window for the other user; Ctrl-C stops everything)\n'
case "$HOST" in
  127.*|localhost|::1) printf '  Listening on %s only. To open it to other machines: HOST=0.0.0.0 %s\n' "$HOST" "$0"
    printf '  (anyone who reaches it can log in as alice or bob: the demo has no passwords)\n' ;;
  *) printf '  Listening on %s: anyone who reaches this port can log in as alice or bob (no passwords).\n' "$HOST" ;;
esac
printf '  Publish socket: %s — from another terminal, notify alice (log in as her first):\n' "$SOCK"
printf "    curl --unix-socket %q http://localhost/publish -H 'content-type: application/json' -d '%s'\n" \
  "$SOCK" '{"userId":"alice","data":{"title":"Hello from curl"}}'
printf '  and everybody in the Team panel (room team:demo):\n'
printf "    curl --unix-socket %q http://localhost/publish -H 'content-type: application/json' -d '%s'\n\n" \
  "$SOCK" '{"room":"team:demo","event":"message","data":{"from":"curl","text":"Hello team"}}'

set -m
"$BIN" --host "$HOST" --port "$PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" --publish-socket "$SOCK" \
  -- node ./dist/server/entry.mjs &
pid=$!
set +m
stop() { trap '' INT TERM HUP; kill -TERM "$pid" 2>/dev/null || true; }
trap stop INT TERM HUP
status=0
while kill -0 "$pid" 2>/dev/null; do
  wait "$pid" && status=0 || status=$?
done
exit "$status"
