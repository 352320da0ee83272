#!/usr/bin/env bash
# The .rpm packages installed with `rpm --root`:
#   1. into an empty root without scriptlets: every file lands where the unit
#      expects it (ExecStart's binary and --config, the sysusers file);
#   2. into a copy of the Debian root (it has sh, useradd, systemctl, setpriv,
#      so the scriptlets really run, chrooted, with no systemd running):
#      install creates the user and the PKI directory and enables the units
#      without starting them; an upgrade (release 2) keeps a local config
#      edit; erase disables the units, removes the files and saves the edited
#      config as .rpmsave.
#
# Usage: rpm-root.sh DIR_WITH_RELEASE_1_RPMS DIR_WITH_RELEASE_2_RPMS
# Needs root and rpm (apt). Takes ~20 s.
set -euo pipefail

rel1="$(cd "$1" && pwd)"
rel2="$(cd "$2" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d /var/tmp/k3sfleet-rpm.XXXXXX)"
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
in_root() { chroot "$deb_root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo "== files land where the units expect them (empty root, no scriptlets)"
empty="$work/empty"
mkdir -p "$empty"
rpm --root "$empty" -i --nodeps --noscripts "$rel1"/k3sfleet-agent-*.rpm "$rel1"/k3sfleet-coordinator-*.rpm
for unit in k3sfleet-agent k3sfleet-coordinator; do
    unit_file="$empty/usr/lib/systemd/system/$unit.service"
    [[ -f $unit_file ]] || fail "no $unit_file"
    read -r -a exec_start <<<"$(sed -n 's/^ExecStart=//p' "$unit_file")"
    [[ -x $empty${exec_start[0]} ]] || fail "$unit: ExecStart binary ${exec_start[0]} is not in the package"
    [[ ${exec_start[2]} == --config && -f $empty${exec_start[3]} ]] || fail "$unit: --config ${exec_start[3]} is not in the package"
    echo "$unit: ${exec_start[*]} -> present"
done
[[ -f $empty/usr/lib/sysusers.d/k3sfleet-coordinator.conf ]] || fail "no sysusers.d file"
[[ -x $empty/usr/bin/k3sfleet ]] || fail "no k3sfleet CLI"
rpm --root "$empty" -qa | sort

echo "== scriptlets, chrooted in a Debian root"
deb_root="$work/debian"
cp -a --reflink=auto "$("$here/debian-root.sh")" "$deb_root"
install_log=$(rpm --root "$deb_root" -i --nodeps "$rel1"/k3sfleet-agent-*.rpm "$rel1"/k3sfleet-coordinator-*.rpm 2>&1)
echo "$install_log"
in_root getent passwd k3sfleet >/dev/null || fail "%pre did not create the k3sfleet user"
[[ $(in_root stat -c '%U %a' /etc/k3sfleet/pki) == "k3sfleet 750" ]] || fail "%post did not create /etc/k3sfleet/pki"
for unit in k3sfleet-agent k3sfleet-coordinator; do
    [[ -L $deb_root/etc/systemd/system/multi-user.target.wants/$unit.service ]] || fail "%post did not enable $unit"
done
! grep -q "not started" <<<"$install_log" || fail "a scriptlet tried to start a service without systemd running"

echo 'address = "10.0.0.5:7443"  # local edit' >"$work/edit"
sed -i "s/^address = .*/$(sed 's/[&/]/\\&/g' "$work/edit")/" "$deb_root/etc/k3sfleet/agent.toml"
rpm --root "$deb_root" -U --nodeps "$rel2"/k3sfleet-agent-*.rpm "$rel2"/k3sfleet-coordinator-*.rpm
[[ $(rpm --root "$deb_root" -q --qf '%{RELEASE}' k3sfleet-agent) == 2 ]] || fail "not upgraded to release 2"
grep -qF '# local edit' "$deb_root/etc/k3sfleet/agent.toml" || fail "the upgrade replaced an edited %config(noreplace)"
[[ -L $deb_root/etc/systemd/system/multi-user.target.wants/k3sfleet-agent.service ]] || fail "the upgrade disabled the agent"

rpm --root "$deb_root" -e k3sfleet-agent k3sfleet-coordinator
for unit in k3sfleet-agent k3sfleet-coordinator; do
    [[ ! -e $deb_root/etc/systemd/system/multi-user.target.wants/$unit.service ]] || fail "erase left $unit enabled"
    [[ ! -e $deb_root/usr/lib/systemd/system/$unit.service ]] || fail "erase left the $unit unit"
done
[[ ! -e $deb_root/usr/bin/k3sfleet-agent ]] || fail "erase left the agent binary"
grep -qF '# local edit' "$deb_root/etc/k3sfleet/agent.toml.rpmsave" || fail "erase did not save the edited config as .rpmsave"
echo "rpm --root: ok"
