#!/usr/bin/env bash
# A fleet to play with by hand, left running:
#   scripts/lab.sh up [--real] [--scenario small|demo|FILE] [--dir DIR]
#   eval "$(scripts/lab.sh env)"    # KUBECONFIG, K3SFLEET_*; then kubectl / k3sfleet
#   scripts/lab.sh down             # stops it and removes what it made (namespaces too)
# --real runs upstream etcd, kube-apiserver, controller-manager, scheduler and
# KWOK (root; scripts/build-testbed.sh builds them). Builds k3sfleet first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked --bins >&2
exec target/debug/k3sfleet-lab "$@"
