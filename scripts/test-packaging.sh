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
#
# Total ~2.5 min once the dev build exists and the Debian root is cached.
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
((${#parts[@]})) || parts=(monitoring packages contents rpm nspawn)
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
        rm -rf "$out/$revision"
        mkdir -p "$out/$revision"
        mv target/packages/* "$out/$revision/"
    done
}

need_packages() {
    [[ -d $out/1 && -d $out/2 ]] || timed packages build_packages
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
    *) echo "scripts/test-packaging.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
echo "packaging tests: ok"
