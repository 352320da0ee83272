#!/usr/bin/env bash
# The agent's host checks on a booted Debian 12 (lib/booted.sh) with the
# .debs installed and the real tools, nothing stood in:
#
#   1. `k3sfleet-agent check` on the bare root, the first command of a new
#      user: the Longhorn packages missing, iscsid inactive, and what a
#      container cannot do (load modules, read its kernel's config) said as
#      such; no disk check calls a filesystem hanging; smartctl missing.
#   2. --fix-iscsid and --fix-modules there: each says why it cannot, and
#      nothing changes.
#   3. `apt-get install open-iscsi nfs-common cryptsetup` inside the root
#      (Debian's archive, cached by debian-packages.sh): those checks OK.
#   4. iscsid turned off: --fix-iscsid enables and starts it through real
#      systemd, says exactly that, and a second run changes nothing; the
#      sandboxed daemon does the same on `k3sfleet remediate`.
#   5. smartctl from Debian (smartmontools) against the container's disk:
#      SMART not available, with the exit status and reason the real
#      tool's JSON gave.
#   6. Prometheus (the host's) scrapes the booted host's agent and
#      coordinator with the shipped alert rules loaded; every rule
#      evaluates; `promtool check metrics` passes on what both serve.
#
# Usage: booted-host.sh DIR_WITH_DEBS
# Needs root, systemd-container, jq, curl, prometheus (promtool). ~1.5 min
# with a cached root and package cache.
set -euo pipefail

debs="$(cd "$1" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=packaging/test/lib/booted.sh
source "$here/lib/booted.sh"

for tool in prometheus promtool curl; do
    command -v "$tool" >/dev/null || { skip_test "$tool is missing (scripts/install-test-deps.sh)"; exit 0; }
done

prometheus_pid=""
diagnose() {
    ct journalctl --no-pager -n 40 -u k3sfleet-agent.service || true
    [[ -f $work/prometheus.log ]] && tail -20 "$work/prometheus.log"
}
stop_prometheus() {
    [[ -n $prometheus_pid ]] || return 0
    kill "$prometheus_pid" 2>/dev/null || true
    wait "$prometheus_pid" 2>/dev/null || true
    prometheus_pid=""
}
trap 'stop_prometheus; booted_cleanup' EXIT

booted_init
trap 'stop_prometheus; booted_cleanup' EXIT
offer_debian_packages
boot
setup_fleet "$debs"

# `k3sfleet-agent check` inside, as root types it; sets $out and $status.
check() {
    status=0
    out=$(ct k3sfleet-agent check "$@" 2>&1) || status=$?
}
# The line of check id $1 in $out; it must start with status $2 and contain $3.
expect_line() {
    local line
    line=$(awk -v id="$1" '$2 == id' <<<"$out")
    [[ -n $line ]] || fail "no $1 line in:\n$out"
    [[ $line == "$2 "* ]] || fail "$1 is not $2: $line"
    [[ $line == *"$3"* ]] || fail "$1 does not say \"$3\": $line"
    echo "  $line"
}
kernel=$(ct uname -r)

step "k3sfleet-agent check on a bare Debian 12"
check
echo "$out" | head -1
((status == 1)) || fail "check exited $status on a host with errors:\n$out"
[[ $out == "k3sfleet-agent check: debian 12, kernel $kernel, K3s not installed"* ]] || fail "header: $(head -1 <<<"$out")"
! grep -qi hanging <<<"$out" || fail "a disk check calls a filesystem hanging:\n$out"
# What dpkg says is missing of Longhorn's packages (minbase has dmsetup).
# shellcheck disable=SC2016 # expanded inside
missing=$(ct sh -c 'for p in nfs-common open-iscsi cryptsetup dmsetup; do
    dpkg-query -W -f="\${db:Status-Abbrev}" $p 2>/dev/null | grep -q ^ii || echo $p; done' | sort | paste -sd' ')
[[ $missing == *open-iscsi* ]] || fail "open-iscsi is installed in the bare root"
expect_line longhorn.packages ERROR \
    "missing Debian packages: ${missing// /, }; install them with \`apt-get install -y $missing\`"
expect_line longhorn.iscsid ERROR "neither iscsid.service nor iscsid.socket is active"
expect_line longhorn.kernel_modules WARNING "this host is a container (systemd-nspawn)"
expect_line longhorn.nfs_client WARNING "cannot read /boot/config-$kernel: this host is a container (systemd-nspawn)"
# shellcheck disable=SC2016 # expanded inside
missing_tools=$(ct sh -c 'for t in bash curl findmnt grep awk blkid lsblk; do command -v $t >/dev/null || printf "%s, " $t; done')
if [[ -n $missing_tools ]]; then
    expect_line longhorn.host_tools ERROR "missing: ${missing_tools%, }; install them"
else
    expect_line longhorn.host_tools OK "are installed"
fi
# Measured on the filesystem it will be created on (its status is this
# machine's free space).
line=$(awk '$2 == "disk.space./var/lib/rancher"' <<<"$out")
[[ $line == *"/var/lib/rancher (not created yet): "*" free ("* ]] || fail "disk.space./var/lib/rancher: $line"
echo "  $line"
json=$(ct k3sfleet-agent check --json || true)
smart_error=$(jq -r '.disks[] | select(.path == "/var/lib/rancher") | .smart.error' <<<"$json")
[[ $smart_error == "smartctl is not installed (package smartmontools)" ]] || fail "SMART without smartctl: $smart_error"
echo "  SMART: $smart_error"

step "--fix-iscsid and --fix-modules where they cannot work"
check --fix-iscsid --fix-modules
grep -A3 '^Remediation:' <<<"$out"
# shellcheck disable=SC2016 # literal backticks
grep -qF 'FAILED:  iscsid is not installed (neither iscsid.socket nor iscsid.service exists): install open-iscsi first (`apt-get install -y open-iscsi`)' <<<"$out" \
    || fail "--fix-iscsid on a bare root:\n$out"
grep -q '^  FAILED:  not loading .*: this host is a container (systemd-nspawn), which cannot load kernel modules' <<<"$out" \
    || fail "--fix-modules in a container:\n$out"
! grep -q '^  changed:' <<<"$out" || fail "something was changed:\n$out"
ct test ! -e /etc/modules-load.d/k3sfleet-longhorn.conf || fail "modules-load.d was written in a container"

step "apt-get install open-iscsi nfs-common cryptsetup (from the cache of Debian's archive)"
started=$SECONDS
ct_apt_install open-iscsi nfs-common cryptsetup >"$work/apt.log" 2>&1 || fail "apt-get install: $(tail -20 "$work/apt.log")"
grep -q '^Need to get 0 B' "$work/apt.log" || fail "apt downloaded something: $(grep '^Need to get' "$work/apt.log")"
echo "installed in $((SECONDS - started)) s, nothing downloaded"
check
expect_line longhorn.packages OK "installed: nfs-common, open-iscsi, cryptsetup, dmsetup"
expect_line longhorn.iscsid OK "iscsid.socket is active"

step "iscsid turned off; --fix-iscsid through real systemd, twice"
ct systemctl disable --now iscsid.socket 2>/dev/null
check
expect_line longhorn.iscsid ERROR "neither iscsid.service nor iscsid.socket is active"
check --fix-iscsid
grep -A2 '^Remediation:' <<<"$out"
changes=$(grep -c '^  changed:' <<<"$out" || true)
[[ $changes == 1 ]] || fail "--fix-iscsid made $changes changes:\n$out"
grep -qF '  changed: enabled and started iscsid.socket (iscsid starts on the first iscsiadm connection)' <<<"$out" \
    || fail "--fix-iscsid did not say what it changed:\n$out"
! grep -q FAILED <<<"$out" || fail "--fix-iscsid failed:\n$out"
[[ $(ct systemctl is-enabled iscsid.socket) == enabled && $(ct systemctl is-active iscsid.socket) == active ]] \
    || fail "iscsid.socket is $(ct systemctl is-enabled iscsid.socket), $(ct systemctl is-active iscsid.socket)"
expect_line longhorn.iscsid OK "iscsid.socket is active"
since=$(unit_property iscsid.socket ActiveEnterTimestampMonotonic)
check --fix-iscsid
grep -qF '  nothing needed fixing' <<<"$out" || fail "the second --fix-iscsid:\n$out"
[[ $(unit_property iscsid.socket ActiveEnterTimestampMonotonic) == "$since" ]] || fail "the second run restarted iscsid.socket"
echo "  second run: nothing needed fixing"

step "the daemon in its sandbox: k3sfleet remediate --enable-iscsid"
ct systemctl disable --now iscsid.socket 2>/dev/null
out=$(ct k3sfleet remediate node-1 --enable-iscsid 2>&1)
echo "$out" | tail -1
grep -q 'succeeded: enabled and started iscsid.socket' <<<"$out" || fail "remediate through the daemon:\n$out"
[[ $(ct systemctl is-active iscsid.socket) == active ]] || fail "the daemon did not start iscsid.socket"

step "smartctl from Debian against the container's disk"
ct_apt_install smartmontools >"$work/apt-smart.log" 2>&1 || fail "apt-get install smartmontools: $(tail -20 "$work/apt-smart.log")"
# The whole disk under /var/lib (where /var/lib/rancher will be), as sysfs says.
majmin=$(ct findmnt -n -o MAJ:MIN -T /var/lib | tr -d ' ')
sysdir=$(ct readlink -f "/sys/dev/block/$majmin")
ct test -e "$sysdir/partition" && sysdir=$(dirname "$sysdir")
disk=/dev/$(basename "$sysdir")
real_status=0
real=$(ct smartctl -j -a "$disk") || real_status=$?
json=$(ct k3sfleet-agent check --json || true)
smart=$(jq -c '.disks[] | select(.path == "/var/lib/rancher") | .smart' <<<"$json")
echo "  smartctl -j -a $disk: exit $real_status, $(jq -c '.smartctl | {exit_status, messages}' <<<"$real")"
echo "  agent: $smart"
[[ $(jq '.smartctl.exit_status' <<<"$real") == "$real_status" ]] || fail "smartctl's JSON and exit status disagree"
[[ $(jq '.exitStatus // 0' <<<"$smart") == "$real_status" ]] || fail "the agent's exit status is not smartctl's"
[[ $(jq -r '.error' <<<"$smart") == "$(jq -r '.smartctl.messages[0].string' <<<"$real")" ]] || fail "the agent's reason is not smartctl's"
[[ $(jq '.available // false' <<<"$smart") == false ]] || fail "SMART reported available on $disk"
for bit in 0 1 2 3 4 5 6 7; do
    ((real_status & (1 << bit))) && echo "  exit status bit $bit set"
done
((real_status & 3)) || fail "smartctl found SMART on $disk: this test expects a disk without (exit $real_status)"

step "Prometheus scrapes the booted host; promtool check metrics"
cp "$root/usr/share/k3sfleet/monitoring/k3sfleet-alerts.yml" "$work/"
cat >"$work/prometheus.yml" <<'EOF'
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [k3sfleet-alerts.yml]
scrape_configs:
  - job_name: k3sfleet-agent
    static_configs: [{targets: ["127.0.0.1:9464"]}]
  - job_name: k3sfleet-coordinator
    static_configs: [{targets: ["127.0.0.1:9465"]}]
EOF
promtool check config "$work/prometheus.yml" >/dev/null
ct_net prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
    --web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
query() { ct_net curl -fsS --max-time 5 http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" | jq -r '.data.result[0].value[1] // empty'; }
scraped() { [[ $(query "up{job=\"$1\"}") == 1 ]]; }
wait_for "Prometheus to scrape the agent" 60 scraped k3sfleet-agent
wait_for "Prometheus to scrape the coordinator" 30 scraped k3sfleet-coordinator
[[ $(query 'k3sfleet_check_status{check="longhorn.iscsid",status="ok"}') == 1 ]] || fail "Prometheus has no ok iscsid check"
[[ $(query 'k3sfleet_disk_smart_available{path="/var/lib/rancher"}') == 0 ]] || fail "Prometheus has SMART available"
[[ $(query 'k3sfleet_node_connected{node="node-1"}') == 1 ]] || fail "Prometheus has node-1 disconnected"
rules_evaluated() {
    ct_net curl -fsS http://127.0.0.1:9090/api/v1/rules \
        | jq -e '[.data.groups[].rules[]] | length > 0 and all(.health == "ok")'
}
wait_for "every alert rule to evaluate on the scraped series" 30 rules_evaluated
echo "  Prometheus: both targets up, $(ct_net curl -fsS http://127.0.0.1:9090/api/v1/rules | jq '[.data.groups[].rules[]] | length') rules evaluated, all ok"
for port in 9464 9465; do
    ct_net curl -fsS --max-time 10 "http://127.0.0.1:$port/metrics" >"$work/metrics-$port"
    promtool check metrics <"$work/metrics-$port" || fail "promtool check metrics on :$port"
    echo "  promtool check metrics :$port: clean ($(grep -c '^# TYPE' "$work/metrics-$port") families)"
done
stop_prometheus

echo
echo "booted host test: ok"
