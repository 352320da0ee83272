#!/usr/bin/env bash
# Footprint benchmark: the agent beside Debian's prometheus-node-exporter
# (RSS, idle CPU over FOOTPRINT_SECONDS (default 60), /metrics scrape
# latency). Needs scripts/install-test-deps.sh (prometheus-node-exporter).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p k3sfleet-agent -p k3sfleet-coordinator --bins
exec cargo bench --locked -p k3sfleet-agent --bench footprint
