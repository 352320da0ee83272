#!/usr/bin/env bash
# The main job, on this machine: builds k3sfleet and runs the demo.
#   scripts/demo.sh                       # the simulated cluster (kubesim)
#   scripts/demo.sh --real                # upstream etcd and control plane (root; scripts/build-testbed.sh)
#   scripts/demo.sh -- --max-unavailable 2   # more `k3sfleet upgrade start` options after --
# Uses the dev profile (dependencies are optimized there too), which shares
# its build with the tests and takes far less time to build than release.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --bins
exec target/debug/k3sfleet-demo "$@"
