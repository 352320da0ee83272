#!/usr/bin/env bash
# The test command: builds every binary the end-to-end tests run, then runs
# every test of the workspace with nextest (parallel, per-test timeouts).
# Needs what scripts/install-test-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --locked
exec cargo nextest run --workspace --locked --no-fail-fast "$@"
