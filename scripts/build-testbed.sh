#!/usr/bin/env bash
# Builds the real test tier's third-party tools from the Go modules pinned in
# testbed/<tool>/go.mod (+ go.sum): the Kubernetes control plane, etcd, KWOK,
# Tailscale and Headscale. Idempotent: each tool set is built once into
#   $K3SFLEET_TESTBED_DIR/<tool>-<version>-<digest of go.mod and go.sum>/
# (default <repo>/.cache/testbed) and reused while its pins do not change.
# Prints each tool set's directory, build time and binary sizes, and finally
# K3SFLEET_TESTBED_BIN=<dir of symlinks to every binary> (the variable the
# real-tier tests read).
#
#   scripts/build-testbed.sh            # everything
#   scripts/build-testbed.sh kube etcd  # some
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${K3SFLEET_TESTBED_DIR:-$repo_root/.cache/testbed}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
bin="$cache/bin"
mkdir -p "$bin"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
command -v go >/dev/null || { echo "build-testbed: go is not installed (Go 1.26 is needed)" >&2; exit 1; }

# The version of a module pinned in a wrapper's go.mod.
pinned() { awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$repo_root/testbed/$1/go.mod"; }

# build TOOLSET VERSION LDFLAGS PACKAGE... : one `go build` into the cache, so
# shared packages compile once; skipped when the directory is complete.
build() {
    local toolset="$1" version="$2" ldflags="$3"
    shift 3
    local module="$repo_root/testbed/$toolset"
    local digest
    digest="$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-12)"
    local out="$cache/$toolset-$version-$digest"
    if [[ -f "$out/.complete" ]]; then
        echo "$toolset $version: cached in $out" >&2
    else
        echo "$toolset $version: building (go $(go env GOVERSION))" >&2
        rm -rf "$out.tmp"
        mkdir -p "$out.tmp"
        local started=$SECONDS
        (cd "$module" && go build -trimpath -tags "selinux,notest,grpcnotrace" \
            -ldflags "-s -w $ldflags" -o "$out.tmp/" "$@")
        echo "$((SECONDS - started))" >"$out.tmp/.build-seconds"
        touch "$out.tmp/.complete"
        rm -rf "$out"
        mv "$out.tmp" "$out"
        echo "$toolset $version: built in $((SECONDS - started)) s" >&2
    fi
    local binary
    for binary in "$out"/*; do
        ln -sfn "$binary" "$bin/$(basename "$binary")"
        echo "  $(basename "$binary"): $(($(stat -c %s "$binary") / 1024 / 1024)) MiB" >&2
    done
}

build_kube() {
    local version major minor
    version="$(pinned kube k8s.io/kubernetes)"
    IFS=. read -r major minor _ <<<"${version#v}"
    # Without these, --version says v0.0.0-master (hack/lib/version.sh sets the same).
    local ldflags=""
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean"
    done
    build kube "$version" "$ldflags" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler
}

build_etcd() {
    local version
    version="$(pinned etcd go.etcd.io/etcd/server/v3)"
    build etcd "$version" "" . go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3
}

build_kwok() {
    local version
    version="$(pinned kwok sigs.k8s.io/kwok)"
    build kwok "$version" "" sigs.k8s.io/kwok/cmd/kwok
}

build_tailscale() {
    local version
    version="$(pinned tailscale tailscale.com)"
    # Without these, `tailscale version` says <version>-ERR-BuildInfo (the
    # build has no VCS stamp); build_dist.sh sets the same two.
    local stamp="-X tailscale.com/version.longStamp=${version#v} -X tailscale.com/version.shortStamp=${version#v}"
    build tailscale "$version" "$stamp" tailscale.com/cmd/tailscale tailscale.com/cmd/tailscaled
}

build_headscale() {
    local version
    version="$(pinned headscale github.com/juanfont/headscale)"
    build headscale "$version" "" github.com/juanfont/headscale/cmd/headscale
}

toolsets=("$@")
((${#toolsets[@]})) || toolsets=(kube etcd kwok tailscale headscale)
for toolset in "${toolsets[@]}"; do
    case "$toolset" in
        kube) build_kube ;;
        etcd) build_etcd ;;
        kwok) build_kwok ;;
        tailscale) build_tailscale ;;
        headscale) build_headscale ;;
        *) echo "build-testbed: unknown tool set '$toolset' (kube, etcd, kwok, tailscale, headscale)" >&2; exit 2 ;;
    esac
done

echo "K3SFLEET_TESTBED_BIN=$bin"
