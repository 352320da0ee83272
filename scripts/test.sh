#!/usr/bin/env bash
# The test command: builds every binary the end-to-end tests run, runs every
# test of the workspace with nextest (parallel, per-test timeouts), then the
# packaging tests, which package those binaries and boot a Debian root with
# them (they need root; elsewhere they are skipped, saying so).
# Needs what scripts/install-test-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
status=0
cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?
if ((EUID == 0)); then
    scripts/test-packaging.sh || status=$?
else
    echo "SKIPPED the packaging tests: they need root (scripts/test-packaging.sh)" >&2
fi
exit "$status"
