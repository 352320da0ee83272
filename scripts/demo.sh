#!/usr/bin/env bash
# The main job, on this machine: builds k3sfleet and runs the demo.
# Uses the dev profile (dependencies are optimized there too), which shares
# its build with the tests and takes far less time to build than release.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --bins
exec target/debug/k3sfleet-demo "$@"
