#!/usr/bin/env bash
# The dashboard's end-to-end tests: headless Chromium (Debian's `chromium`, which
# scripts/test-env.sh installs) driven by playwright-core against a real `lapse serve` that
# ui/e2e/run.mjs starts (temp data dir, an admin key, two tenants). Screenshots of every page
# go to target/ui-artefacts/. Uses the built binary: LAPSE_BIN (default: the debug build in
# CARGO_TARGET_DIR or target/, built as `cargo test` builds it when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
bin=${LAPSE_BIN:-$target/debug/lapse}
if [ ! -x "$bin" ]; then
  # The suite's own build (same features as `cargo test`), so nothing is built twice.
  cargo test --workspace --all-targets --no-run
fi
command -v chromium >/dev/null || { echo "test-ui: chromium is missing (scripts/test-env.sh installs it)"; exit 1; }
# The lockfile's packages (playwright-core among them); never a browser download.
if [ ! -d ui/node_modules ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
  (cd ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
LAPSE_BIN="$bin" LAPSE_UI_ARTEFACTS="${LAPSE_UI_ARTEFACTS:-$PWD/target/ui-artefacts}" node ui/e2e/run.mjs
