#!/usr/bin/env bash
# Footprint benchmark: the agent beside Debian's prometheus-node-exporter
# (RSS, threads, idle CPU over FOOTPRINT_SECONDS (default 60), /metrics
# scrape latency and CPU), measured in one run (agent/benches/footprint.rs).
#
#   scripts/footprint.sh               # both on this machine, started by the bench
#   scripts/footprint.sh --booted      # both as systemd services on a booted Debian 12,
#                                      # the agent from the release packages, connected
#                                      # (packaging/test/booted-footprint.sh; root)
#   scripts/footprint.sh --booted DIR  # the same with the .debs in DIR, the agent's
#                                      # release build put in place of theirs (CI:
#                                      # `scripts/test-packaging.sh footprint`)
#
# Needs scripts/install-test-deps.sh (prometheus-node-exporter; for
# --booted what the packaging tests need). Release builds: ~20 min cold on
# 2 cores for the packages, ~5 min for the agent alone, a few minutes after
# a change to the agent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} != --booted ]]; then
    cargo build --release --locked -p k3sfleet-agent -p k3sfleet-coordinator --bins
    exec cargo bench --locked -p k3sfleet-agent --bench footprint
fi
debs="${2:-}"

# Attached to running processes the bench only reads /proc and scrapes: its
# dev build (the test profile, whose dependencies the test run built) does.
bench=$(cargo test --locked -p k3sfleet-agent --bench footprint --no-run --message-format=json \
    | jq -r 'select(.reason == "compiler-artifact" and .target.name == "footprint") | .executable')

if [[ -z $debs ]]; then
    # scripts/package.sh --release packages the agent built alone.
    scripts/package.sh --release
    debs=target/footprint-debs
    rm -rf "$debs"
    mkdir -p "$debs"
    cp target/packages/*.deb "$debs/"
    exec packaging/test/booted-footprint.sh "$debs" "$bench"
fi

# The agent as a release ships it: built alone, as scripts/package.sh
# --release builds it, and stripped.
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
cargo build --locked --release -p k3sfleet-agent --bin k3sfleet-agent
agent="$target_dir/footprint/k3sfleet-agent"
mkdir -p "$(dirname "$agent")"
strip --strip-all -o "$agent" "$target_dir/release/k3sfleet-agent"
exec packaging/test/booted-footprint.sh "$debs" "$bench" "$agent"
