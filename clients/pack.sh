#!/usr/bin/env bash
# Packs the client packages (@sockgate/client, @sockgate/react) into target/packages/, where
# the examples install them from (`file:../../target/packages/<name>-<version>.tgz`).
#
# A tarball is replaced only when its contents changed, so its mtime says "rebuilt": an
# example whose node_modules is older than a tarball needs `npm ci` again (tests/run.sh and
# examples/astro/demo.sh check that).
#
# The examples' package-lock.json must not pin an `integrity` for these tarballs: npm would
# then install the copy in its cache with that hash (the old package, silently) or fail on
# a clean machine once the package changed. Without one, `npm ci` reads the tarball itself.
# (The lock still lists each package's own dependencies: both have none today. One that gains
# some needs `npm install` in the examples, then these integrity lines deleted again.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/packages"
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-pack-XXXXXX")
trap 'rm -rf "$work"' EXIT

# @sockgate/react compiles with tsc in its prepack: its devDependencies first.
react="$ROOT/clients/react"
if [ ! -d "$react/node_modules" ] || [ "$react/package-lock.json" -nt "$react/node_modules/.package-lock.json" ]; then
  (cd "$react" && npm ci --no-audit --no-fund --loglevel=error)
fi

for pkg in node react; do
  (cd "$ROOT/clients/$pkg" && npm pack --silent --pack-destination "$work" >/dev/null)
done
for tgz in "$work"/*.tgz; do
  dest="$OUT/$(basename "$tgz")"
  if ! cmp -s "$tgz" "$dest"; then
    mv "$tgz" "$dest"
    echo "packed $(basename "$tgz")"
  fi
done

pinned=$(cd "$ROOT" && node -e '
  const fs = require("fs");
  for (const lock of process.argv.slice(1)) {
    const { packages = {} } = JSON.parse(fs.readFileSync(lock, "utf8"));
    for (const [name, p] of Object.entries(packages))
      if (String(p.resolved || "").includes("target/packages/") && p.integrity) console.log(`${lock}: ${name}`);
  }' examples/*/package-lock.json)
if [ -n "$pinned" ]; then
  echo "clients/pack.sh: these lock entries pin an integrity for a local tarball (npm install adds one);" >&2
  echo "delete their \"integrity\" lines:" >&2
  echo "$pinned" >&2
  exit 1
fi
