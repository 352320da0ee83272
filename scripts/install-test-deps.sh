#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, idempotently:
# Debian packages, cargo tools, and third-party client binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    prometheus                 # promtool, and a real Prometheus that scrapes agents
    prometheus-node-exporter   # the footprint benchmark's yardstick
    iproute2                   # network namespaces for multi-host tests
    nftables                   # cutting hosts off the network
    systemd                    # systemd-analyze verify for the agent's unit
    # Packaging tests (scripts/test-packaging.sh).
    debootstrap                # the Debian root the packages are installed in
    systemd-container          # systemd-nspawn boots it
    rpm                        # rpm -qp, rpm --root
    curl                       # /metrics inside the container's network namespace
    jq
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii' || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# Package builders for scripts/package.sh (~6 and ~8 min to compile on 2 busy cores, once).
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm --version 0.21.1

# kubectl 1.20 (Debian) and a current kubectl (npm) for kubesim's fidelity tests.
scripts/fetch-test-tools.sh
