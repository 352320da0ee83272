#!/usr/bin/env bash
# Prints the path of a cached apt state for the booted-host tests: the
# package lists (lists/) and every .deb (archives/) that installing the
# packages this script names, with their dependencies and recommends, into
# the cached Debian root (debian-root.sh) needs. Copied into a booted copy's
# /var/lib/apt/lists and /var/cache/apt/archives, they let
# `apt-get install PACKAGE` run there as an operator types it, from Debian's
# archive, with no network: apt finds every file already downloaded.
#
# Made once in a throwaway copy of the root (chroot, the host's network):
# apt-get update, then apt-get install --download-only. Idempotent: a
# complete cache (marked by .complete, written last) is reused; its key is
# the root's key and the package list, so a changed list makes a new one.
# Takes ~10-20 s once; ~40 MB of .debs, ~50 MB of lists.
# Cache: $K3SFLEET_CACHE_DIR (default <repo>/.cache)/debian-packages/<key>.
# Needs root.
set -euo pipefail

# What the booted-host tests install inside the root: the Longhorn
# prerequisites an operator installs, smartctl, and the footprint yardstick.
PACKAGES=(open-iscsi nfs-common cryptsetup smartmontools prometheus-node-exporter)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
cache_dir="${K3SFLEET_CACHE_DIR:-$repo_root/.cache}"
base="$("$here/debian-root.sh")"
key="$(basename "$base")-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-12)"
out="$cache_dir/debian-packages/$key"

if [[ -f "$out/.complete" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_dir/debian-packages"
rm -rf "$out" "$out.partial"
mkdir -p "$out.partial"
echo "downloading ${PACKAGES[*]} for $(basename "$base") into $out (once)" >&2
chroot_dir="$out.partial/root"
cp -a --reflink=auto "$base" "$chroot_dir"
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
in_root() {
    chroot "$chroot_dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
}
in_root apt-get -q update >&2
in_root apt-get -q install --download-only -y "${PACKAGES[@]}" >&2
mkdir -p "$out.partial/lists" "$out.partial/archives"
# apt needs the Release and Packages files; translations only describe.
find "$chroot_dir/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock ! -name '*Translation*' \
    -exec cp {} "$out.partial/lists/" \;
cp "$chroot_dir"/var/cache/apt/archives/*.deb "$out.partial/archives/"
rm -rf "$chroot_dir"
date -u +%FT%TZ >"$out.partial/.complete"
mv "$out.partial" "$out"
echo "$out"
