#!/usr/bin/env bash
# The footprint benchmark on a booted Debian 12 (lib/booted.sh): the agent
# runs as its systemd service, enrolled and connected to the coordinator
# beside it, its checks running on the real host tools (the Longhorn
# prerequisites and smartmontools installed); Debian's
# prometheus-node-exporter runs as its service. agent/benches/footprint.rs,
# run in the container's network namespace, measures both in the same run
# (FOOTPRINT_ATTACH): RSS after warm-up, threads, CPU over an idle window,
# CPU and latency per scrape.
#
# Usage: booted-footprint.sh DIR_WITH_DEBS FOOTPRINT_BENCH [AGENT_BINARY]
#   DIR_WITH_DEBS   the coordinator and agent .debs (scripts/package.sh)
#   FOOTPRINT_BENCH the bench's executable (cargo test/bench --no-run)
#   AGENT_BINARY    a release build of k3sfleet-agent put in place of the
#                   package's before the service starts (CI packages the dev
#                   build; `scripts/package.sh --release` packages this one)
# scripts/footprint.sh --booted and scripts/test-packaging.sh footprint do
# it all. FOOTPRINT_SECONDS sets the idle window (default 60);
# FOOTPRINT_MAX_RSS_RATIO, when set, fails the run if the agent's RSS is
# more than that fraction of node_exporter's. ~1 min plus the window.
set -euo pipefail

debs="$(cd "$1" && pwd)"
bench="$(realpath "$2")"
agent_binary="${3:+$(realpath "$3")}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=packaging/test/lib/booted.sh
source "$here/lib/booted.sh"
[[ -x $bench ]] || fail "no footprint bench at $bench"
[[ -z $agent_binary || -x $agent_binary ]] || fail "no agent binary at $agent_binary"

booted_init
offer_debian_packages
boot
setup_fleet "$debs"

step "the host the agent checks, and node_exporter beside it"
ct_apt_install open-iscsi nfs-common cryptsetup smartmontools >"$work/apt.log" 2>&1 || fail "apt-get: $(tail "$work/apt.log")"
ct_apt_install --no-install-recommends prometheus-node-exporter >>"$work/apt.log" 2>&1 || fail "apt-get: $(tail "$work/apt.log")"
if [[ -n $agent_binary ]]; then
    # A rename, as dpkg does: the running binary's file stays whole.
    install -m 0755 "$agent_binary" "$root/usr/bin/.k3sfleet-agent.footprint"
    mv "$root/usr/bin/.k3sfleet-agent.footprint" "$root/usr/bin/k3sfleet-agent"
fi
ct systemctl restart k3sfleet-agent.service
wait_for "node-1 to reconnect" 60 node_connected
wait_for "node_exporter to answer" 30 ct_net curl -fsS -o /dev/null http://127.0.0.1:9100/metrics
agent=$(host_pid_of k3sfleet-agent.service) || fail "no agent process"
exporter=$(host_pid_of prometheus-node-exporter.service) || fail "no node_exporter process"
# shellcheck disable=SC2016 # dpkg-query's format
exporter_version=$(ct dpkg-query -W -f='${Version}' prometheus-node-exporter)
agent_size=$(stat -c %s "$root/usr/bin/k3sfleet-agent" | awk '{ printf "%.1f", $1 / 1048576 }')
echo "agent: $(ct k3sfleet-agent --version), ${agent_size} MiB$([[ -n $agent_binary ]] && echo ", $agent_binary"), pid $agent"
echo "node_exporter: prometheus-node-exporter $exporter_version, pid $exporter"
echo "host: Debian $(cat "$root/etc/debian_version"), $(ct systemctl --version | head -1), kernel $(uname -r), $(nproc) cores"

step "measuring"
FOOTPRINT_ATTACH="k3sfleet-agent=$agent@127.0.0.1:9464,node_exporter=$exporter@127.0.0.1:9100" \
    FOOTPRINT_SETTING="booted Debian $(cat "$root/etc/debian_version"), both systemd services, the agent connected to a coordinator" \
    ct_net "$bench" --bench
