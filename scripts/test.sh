#!/usr/bin/env bash
# The test command: builds every binary the end-to-end tests run, runs every
# test of the workspace with nextest (parallel, per-test timeouts; the real
# tier's tests one at a time, see .config/nextest.toml), then the packaging
# tests, which package those binaries and boot a Debian root with them,
# then fuzzes every parser of hostile input for a bounded time.
# A test that cannot run here (no root, a tool missing) is not counted as
# passed: it records why in $K3SFLEET_SKIP_DIR and the end of the run lists
# every such test as SKIPPED. With K3SFLEET_FORBID_SKIPS set (CI), such a
# test fails instead.
# Needs what scripts/install-test-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

skips="$(mktemp -d)"
trap 'rm -rf "$skips"' EXIT
export K3SFLEET_SKIP_DIR="$skips"

cargo build --workspace --bins --locked
status=0
started=$SECONDS
cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?
echo "nextest: $((SECONDS - started)) s" >&2
if ((EUID == 0)); then
    scripts/test-packaging.sh || status=$?
else
    echo "SKIPPED the packaging tests: they need root (scripts/test-packaging.sh)" >&2
fi
scripts/fuzz.sh || status=$?

shopt -s nullglob
skipped=("$skips"/*)
if ((${#skipped[@]})); then
    echo "SKIPPED ${#skipped[@]} tests:" >&2
    sort "${skipped[@]}" | sed 's/^/  /' >&2
fi
exit "$status"
