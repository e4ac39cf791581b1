#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests (real Node app, real sockets), the Node
# integration tests (real socket.io-client), the client packages' tests (@sockgate/client,
# @sockgate/react), and the browser end-to-end test (Debian chromium + playwright-core).
# Installs npm dependencies it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "tests/run.sh: '$1' is required ($2)" >&2; exit 2; }; }
need cargo "install Rust: https://rustup.rs"
need node "install Node.js 20+"
need npm "install Node.js 20+"

npm_install() { # dir [file…: also reinstall when one is newer than the install]
  local dir="$1" stamp="$1/node_modules/.package-lock.json"
  shift
  if [ ! -e "$stamp" ] || [ -n "$(find "$dir/package-lock.json" "$@" -newer "$stamp" -print 2>/dev/null)" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
npm_install tests/fixture

# Temp dirs the tests make (sockgate-test-*, sockgate-prop-*, sockgate-docker-*, …) must all
# be gone at the end; what was there before the run is not ours to judge.
TMPDIR_CHECKED="${TMPDIR:-/tmp}"
temp_leftovers() { find "$TMPDIR_CHECKED" -maxdepth 1 -name 'sockgate-*-*' -newer "$STARTED" -print 2>/dev/null | sort; }
STARTED=$(mktemp "$TMPDIR_CHECKED/run-sh-start.XXXXXX")
trap 'rm -f "$STARTED"' EXIT
# The client packages as users get them (npm pack), then the examples that install them.
echo "== npm pack clients/node clients/react → target/packages/"
clients/pack.sh
npm_install examples/astro target/packages/
npm_install examples/next target/packages/
export ASTRO_TELEMETRY_DISABLED=1 # no telemetry notice in the build's output
export NEXT_TELEMETRY_DISABLED=1

# `next build` takes a minute or more on 2 cores: skip it when nothing it reads changed since
# the last one (a stamp in .next/: the hash of the example's files, of the client tarballs it
# installs, which clients/pack.sh rewrites only when their contents change, and node's version).
next_build() {
  local dir=examples/next stamp=examples/next/.next/sockgate-build.stamp sum
  sum=$( { node --version; git ls-files -z -co --exclude-standard -- "$dir" | LC_ALL=C sort -z | xargs -0 -r sha256sum
    sha256sum target/packages/*.tgz; } | sha256sum)
  if [ -f "$dir/.next/BUILD_ID" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
    echo "== next build: examples/next and the client packages unchanged since the last build"
    return
  fi
  echo "== next build in examples/next"
  (cd "$dir" && npm run build --silent >/dev/null)
  echo "$sum" >"$stamp"
}

echo "== module graph: no import cycles, no import against ARCHITECTURE.md's layers"
python3 tests/layers.py
python3 tests/links.py
echo "== vendored crates resolve to vendor/"
tests/install/check.sh
echo "== cargo build"
cargo build --quiet --workspace --bins
echo "== cargo test"
cargo test --quiet -- --test-threads="${SOCKGATE_TEST_THREADS:-4}"
# The vendored crates sit outside the workspace, so `cargo test` above does not run their unit
# tests: the engine patches' own tests (direct write, writer order, reader task size) run here.
echo "== cargo test (vendored engineioxide and tungstenite patches)"
cargo test --quiet -p engineioxide -p tungstenite --lib

export SOCKGATE_BIN="$PWD/target/debug/sockgate"
echo "== node --test (integration, client packages)"
node --test --test-concurrency=2 tests/js/ clients/node/test/ clients/react/test/
# Again on the one-thread runtime, where senders write WebSocket frames directly (issue 32
# stage 4; on more CPUs the default runtime queues them): the files about order, slow readers,
# drains and binary frames.
echo "== node --test (WebSocket edges, server.runtime = single)"
SOCKGATE_TEST_RUNTIME=single node --test --test-concurrency=2 tests/js/broadcast-edges.test.mjs \
  tests/js/reliability.test.mjs tests/js/msgpack.test.mjs tests/js/recovery.test.mjs

echo "== benchmark smoke (200 sockets through the load generator)"
bench/smoke.sh

if [ -f tests/e2e/browser.test.mjs ]; then
  echo "== browser end-to-end"
  if command -v chromium >/dev/null 2>&1; then
    (cd examples/astro && npm run build --silent >/dev/null)
    next_build
    node --test tests/e2e/
  else
    echo "chromium is not installed (apt-get install chromium); the browser test cannot run" >&2
    exit 2
  fi
fi
left=$(temp_leftovers)
if [ -n "$left" ]; then
  echo "tests left temp files behind:" >&2
  echo "$left" >&2
  exit 1
fi
echo "== all tests passed"
