#!/usr/bin/env bash
# The patched build is the one users get. [patch.crates-io] applies to builds of this
# workspace only (not to a crates.io install or to dependents), which is why sockgate is
# `publish = false` and installed from the repository. This checks:
#   1. every crate under vendor/ resolves to its vendor/ copy, and no registry copy of it is
#      in the graph (cargo metadata; seconds);
#   2. with --install: `cargo install --locked --path .` produces exactly the binary
#      `cargo build --release --locked` makes from the same tree (a full release build:
#      minutes; .ci/run runs it). The install root is a temp dir, removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo metadata --locked --format-version 1 >target/metadata.json
for manifest in vendor/*/Cargo.toml; do
  name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -1)
  node -e '
    const [file, name, dir] = process.argv.slice(1);
    const meta = JSON.parse(require("fs").readFileSync(file, "utf8"));
    const copies = meta.packages.filter((p) => p.name === name);
    const path = require("path");
    const bad = copies.filter((p) => p.source !== null || !p.manifest_path.startsWith(path.resolve(dir) + "/"));
    if (copies.length === 0 || bad.length) {
      console.error(`install check: ${name} must resolve to ${dir} only; found ${JSON.stringify(copies.map((p) => p.source ?? p.manifest_path))}`);
      process.exit(1);
    }
    console.log(`install check: ${name} resolves to ${dir}`);
  ' target/metadata.json "$name" "$(dirname "$manifest")"
done
rm -f target/metadata.json

if [ "${1:-}" = "--install" ]; then
  root=$(mktemp -d "${TMPDIR:-/tmp}/sockgate-install-XXXXXX")
  trap 'rm -rf "$root"' EXIT
  target=target/install-check
  cargo install --quiet --locked --path . --root "$root" --target-dir "$target" --bin sockgate
  cargo build --quiet --release --locked --target-dir "$target" --bin sockgate
  cmp "$root/bin/sockgate" "$target/release/sockgate"
  echo "install check: cargo install --locked --path . gives the workspace's (vendored) build"
fi
