#!/usr/bin/env bash
# Prints the path of a cached Debian bookworm root that boots under
# systemd-nspawn, creating it first when the cache has none.
#
# The root is debootstrap's minbase plus what a booted systemd host needs
# (systemd, systemd-sysv, dbus) and what package maintainer scripts use
# (init-system-helpers comes with systemd). It is never booted itself:
# tests copy it (cp --reflink=auto) and boot the copy.
#
# Idempotent: a complete root (marked by .k3sfleet-root-complete, written last)
# is reused; a half-made one is removed and made again. Takes ~1-2 min once.
# Cache: $K3SFLEET_CACHE_DIR (default <repo>/.cache)/debian-root/<key>.
# Needs root and the apt package debootstrap.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${K3SFLEET_CACHE_DIR:-$repo_root/.cache}"
suite=bookworm
mirror="${K3SFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
include=systemd,systemd-sysv,dbus,init-system-helpers,procps
# The key changes whenever what goes into the root changes.
key="$suite-minbase-$(printf '%s' "$include" | sha256sum | cut -c1-12)"
root="$cache_dir/debian-root/$key"
marker="$root/.k3sfleet-root-complete"

if [[ -f "$marker" ]]; then
    echo "$root"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$cache_dir/debian-root"
rm -rf "$root" "$root.partial"
echo "creating the Debian $suite root in $root (debootstrap, once)" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$root.partial" "$mirror" >&2

# What every booted copy needs and the first boot would otherwise ask for.
echo k3sfleet-test >"$root.partial/etc/hostname"
printf '127.0.0.1 localhost k3sfleet-test\n::1 localhost ip6-localhost\n' >"$root.partial/etc/hosts"
# Boot quietly and quickly: no getty on the console, no first-boot wizard.
ln -sf /dev/null "$root.partial/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$root.partial/etc/systemd/system/systemd-firstboot.service"
rm -f "$root.partial/etc/machine-id"
: >"$root.partial/etc/machine-id"
# apt caches are not needed in the copies.
rm -rf "$root.partial"/var/cache/apt/archives/*.deb "$root.partial"/var/lib/apt/lists/*

date -u +%FT%TZ >"$root.partial/.k3sfleet-root-complete"
mv "$root.partial" "$root"
echo "$root"
