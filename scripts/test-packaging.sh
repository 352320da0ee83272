#!/usr/bin/env bash
# The packaging tests (CI runs this after scripts/test.sh, which built the
# dev binaries it packages):
#
#   monitoring  promtool check/test of the alert rules, scrape configs and
#               dashboard expressions (packaging/test/monitoring.sh)    ~5 s
#   packages    scripts/package.sh twice (revision 1 and 2)            ~1 min
#   contents    what the .deb/.rpm hold and declare; glibc floor        ~5 s
#   rpm         rpm --root installs, scriptlets, upgrade, erase         ~20 s
#   nspawn      the .debs on a booted Debian bookworm (systemd-nspawn)  ~70 s
#               (+ ~1-4 min once, to debootstrap the cached root)
#   booted-host the agent's checks on the booted host with real tools:  ~65 s
#               Longhorn prerequisites before and after apt-get install,
#               --fix-iscsid, container limits, smartctl, Prometheus
#               (+ ~10-20 s once, to cache the Debian packages it installs)
#   booted-k3s  K3s under real systemd: install, upgrade, rollback, and  ~100 s
#               power cuts at each point of the binary swap
#   footprint   the agent's release build (built alone, as              ~4 min
#               `scripts/package.sh --release` builds it: ~3 min cold)
#               beside Debian's prometheus-node-exporter on the booted
#               host: RSS, CPU idle over FOOTPRINT_SECONDS (here 20 s
#               unless set), CPU and latency per scrape; fails when the
#               agent's RSS is more than FOOTPRINT_MAX_RSS_RATIO (0.5)
#               of node_exporter's
#
# Total ~9 min once the dev build exists and the Debian root is cached.
#
#   scripts/test-packaging.sh            # everything
#   scripts/test-packaging.sh monitoring # only the named parts (packages are
#                                        # built when a later part needs them)
#
# Needs root and what scripts/install-test-deps.sh installs. The Debian root is
# cached in $K3SFLEET_CACHE_DIR (default .cache/). Writes the units'
# systemd-analyze security exposure to target/packages-test/security.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
((${#parts[@]})) || parts=(monitoring packages contents rpm nspawn booted-host booted-k3s footprint)
out=target/packages-test
export K3SFLEET_SECURITY_REPORT="$PWD/$out/security.txt"

timed() {
    local name="$1" start=$SECONDS
    shift
    printf '\n######## %s\n' "$name"
    "$@"
    printf '######## %s: ok in %ss\n' "$name" $((SECONDS - start))
}

build_packages() {
    for revision in 1 2; do
        scripts/package.sh --revision "$revision"
        rm -rf "${out:?}/$revision"
        mkdir -p "$out/$revision"
        mv target/packages/* "$out/$revision/"
    done
}

need_packages() {
    [[ -d $out/1 && -d $out/2 ]] || timed packages build_packages
}

# The agent as a release ships it, in the booted host the dev packages set up.
footprint() {
    FOOTPRINT_SECONDS="${FOOTPRINT_SECONDS:-20}" FOOTPRINT_MAX_RSS_RATIO="${FOOTPRINT_MAX_RSS_RATIO:-0.5}" \
        scripts/footprint.sh --booted "$out/1"
}

for part in "${parts[@]}"; do
    case "$part" in
    monitoring) timed monitoring packaging/test/monitoring.sh ;;
    packages) timed packages build_packages ;;
    contents) need_packages; timed contents packaging/test/contents.sh "$out/1" ;;
    rpm) need_packages; timed rpm packaging/test/rpm-root.sh "$out/1" "$out/2" ;;
    nspawn)
        need_packages
        : >"$K3SFLEET_SECURITY_REPORT"
        timed nspawn packaging/test/nspawn.sh "$out/1" "$out/2"
        ;;
    booted-host) need_packages; timed booted-host packaging/test/booted-host.sh "$out/1" ;;
    booted-k3s) need_packages; timed booted-k3s packaging/test/booted-k3s.sh "$out/1" ;;
    footprint) need_packages; timed footprint footprint ;;
    *) echo "scripts/test-packaging.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
echo "packaging tests: ok"
