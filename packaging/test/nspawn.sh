#!/usr/bin/env bash
# The .deb packages on a booted systemd host: a copy of the cached Debian
# bookworm root (debian-root.sh) boots under systemd-nspawn with a private
# network, and this script drives it from outside with nsenter (lib/booted.sh):
#
#   1. install both packages (revision 1): enabled, not started, told what to do
#   2. systemd-analyze verify (clean) and security (exposure printed)
#   3. `ca init` as the k3sfleet user, start the coordinator (Type=notify: the
#      start returns on READY=1), admin certificate, bootstrap token,
#      `k3sfleet-agent enroll`, start the agent
#   4. both active with their sd_notify status, log lines in journald, the
#      agent connected (k3sfleet nodes), /metrics answering; the agent
#      renews its 1-minute certificate inside its sandbox
#   5. upgrade to revision 2: local config edits kept, both services restarted
#   6. remove (services stopped, state kept), purge (state gone)
#
# Usage: nspawn.sh DIR_WITH_REVISION_1_DEBS DIR_WITH_REVISION_2_DEBS
# Needs root, systemd-container, debootstrap (first run), curl, jq.
# Takes ~70 s with a cached root (the 40 s certificate renewal wait dominates).
set -euo pipefail

rev1="$(cd "$1" && pwd)"
rev2="$(cd "$2" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=packaging/test/lib/booted.sh
source "$here/lib/booted.sh"

diagnose() {
    ct systemctl --no-pager status k3sfleet-coordinator.service k3sfleet-agent.service || true
    ct journalctl --no-pager -n 60 -u k3sfleet-coordinator.service -u k3sfleet-agent.service || true
}

step "boot a copy of the Debian root"
booted_init
mkdir -p "$root/root/rev1" "$root/root/rev2"
cp "$rev1"/*.deb "$root/root/rev1/"
cp "$rev2"/*.deb "$root/root/rev2/"
boot

step "install revision 1: enabled, not started without credentials"
install_log=$(ct sh -c 'dpkg -i /root/rev1/k3sfleet-coordinator_*.deb /root/rev1/k3sfleet-agent_*.deb 2>&1' </dev/null)
echo "$install_log"
for unit in k3sfleet-coordinator k3sfleet-agent; do
    grep -q "$unit is enabled but not started" <<<"$install_log" || fail "no next-steps message for $unit"
    [[ $(ct systemctl is-enabled "$unit") == enabled ]] || fail "$unit is not enabled"
    [[ $(ct systemctl is-active "$unit" || true) == inactive ]] || fail "$unit started without credentials"
done
grep -q "k3sfleet-agent enroll" <<<"$install_log" || fail "the agent's next steps do not mention enroll"
ct getent passwd k3sfleet | grep -q ':/var/lib/k3sfleet/coordinator:/usr/sbin/nologin$' \
    || fail "no k3sfleet system user: $(ct getent passwd k3sfleet)"
[[ $(ct stat -c '%U:%G %a' /etc/k3sfleet/pki) == "k3sfleet:k3sfleet 750" ]] || fail "/etc/k3sfleet/pki ownership"
[[ $(ct stat -c '%a' /etc/k3sfleet/agent) == 700 ]] || fail "/etc/k3sfleet/agent mode"
ct test -x /usr/bin/k3sfleet || fail "no k3sfleet CLI"
ct test -f /usr/share/man/man1/k3sfleet-drain.1.gz || fail "no man pages"
ct test -f /usr/share/bash-completion/completions/k3sfleet || fail "no bash completion"

step "systemd-analyze verify and security"
# --man=no: minbase has no man-db to resolve Documentation=man:...
verify=$(ct systemd-analyze verify --man=no k3sfleet-agent.service k3sfleet-coordinator.service 2>&1 || true)
[[ -z $verify ]] || fail "systemd-analyze verify: $verify"
echo "systemd-analyze verify: clean"
for unit in k3sfleet-agent k3sfleet-coordinator; do
    exposure=$(ct systemd-analyze security --no-pager "$unit.service" | grep -o 'Overall exposure level for .*')
    echo "$exposure"
    echo "$exposure" >>"${K3SFLEET_SECURITY_REPORT:-/dev/null}"
done
coordinator_exposure=$(ct systemd-analyze security --no-pager k3sfleet-coordinator.service \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
awk -v e="$coordinator_exposure" 'BEGIN { exit !(e <= 2.0) }' \
    || fail "the coordinator's exposure rose to $coordinator_exposure (at most 2.0)"

step "credentials, coordinator, enrollment, agent"
ct runuser -u k3sfleet -- k3sfleet-coordinator ca init --san 127.0.0.1 --san localhost | tee "$work/ca-init"
fingerprint=$(sed -n 's/^fleet CA fingerprint: //p' "$work/ca-init")
[[ $fingerprint == sha256:* ]] || fail "no CA fingerprint in the ca init output"
# A local edit that the upgrade must keep.
ct sed -i 's/^# report_flush_interval = "5s"/report_flush_interval = "2s"  # local edit/' /etc/k3sfleet/coordinator.toml
ct grep -q 'local edit' /etc/k3sfleet/coordinator.toml || fail "editing coordinator.toml"
ct runuser -u k3sfleet -- k3sfleet-coordinator check-config
ct systemctl start k3sfleet-coordinator.service
[[ $(ct systemctl is-active k3sfleet-coordinator) == active ]] || fail "the coordinator is not active"
status_text=$(unit_property k3sfleet-coordinator.service StatusText)
[[ $status_text == "serving on "* ]] || fail "no READY status from the coordinator: $status_text"
echo "coordinator ready: $status_text"

ct install -d -m 0700 /root/.config/k3sfleet
ct install -d -o k3sfleet -m 0700 /var/lib/k3sfleet/ci-admin
ct runuser -u k3sfleet -- k3sfleet-coordinator cert issue --role admin --name ci --out-dir /var/lib/k3sfleet/ci-admin
ct sh -c 'install -m 0600 /var/lib/k3sfleet/ci-admin/ci.* /root/.config/k3sfleet/ && rm -r /var/lib/k3sfleet/ci-admin'
ct sh -c 'cat >/root/.config/k3sfleet/config.toml' <<'EOF'
coordinator = "127.0.0.1:7443"
ca = "/etc/k3sfleet/pki/ca.crt"
cert = "/root/.config/k3sfleet/ci.crt"
key = "/root/.config/k3sfleet/ci.key"
EOF
# A 1-minute agent certificate: the agent renews it (at two thirds) inside its
# sandbox while the checks below run.
ct sh -c 'k3sfleet token create --role agent --ttl 10m --cert-ttl 1m --name-pattern "node-*" >/root/agent-token'
ct sed -i -e 's/^address = .*/address = "127.0.0.1:7443"  # local edit/' /etc/k3sfleet/agent.toml
ct k3sfleet-agent enroll --name node-1 --token-file /root/agent-token --ca-fingerprint "$fingerprint"
enrolled_at=$SECONDS
ct k3sfleet-agent check-config
ct systemctl start k3sfleet-agent.service
[[ $(ct systemctl is-active k3sfleet-agent) == active ]] || fail "the agent is not active"
# Type=notify: `systemctl start` returned once READY=1 arrived. The status
# line is the READY one or, once the session is up, the agent's next one.
status_text=$(unit_property k3sfleet-agent.service StatusText)
[[ $status_text == "node node-1, coordinator 127.0.0.1:7443" || $status_text == "connected to 127.0.0.1:7443" ]] \
    || fail "no sd_notify status from the agent: $status_text"
echo "agent ready: $status_text"

# The sandboxes as the kernel sees them: the writable mounts under /etc.
rw_etc_mounts() {
    local pid
    pid=$(unit_property "$1.service" MainPID)
    # shellcheck disable=SC2016 # awk's fields
    ct awk '$5 ~ /^\/etc/ && $6 ~ /^rw/ { print $5 }' "/proc/$pid/mountinfo"
}
# The agent: its credentials, and modules-load.d for Longhorn remediation.
agent_rw=$(rw_etc_mounts k3sfleet-agent | sort | tr '\n' ' ')
[[ $agent_rw == "/etc/k3sfleet/agent /etc/modules-load.d " ]] \
    || fail "the agent may write under /etc: $agent_rw (expected /etc/k3sfleet/agent /etc/modules-load.d)"
[[ -z $(rw_etc_mounts k3sfleet-coordinator) ]] \
    || fail "the coordinator may write under /etc: $(rw_etc_mounts k3sfleet-coordinator | tr '\n' ' ')"
echo "sandboxes: under /etc the agent writes only $agent_rw, the coordinator nothing"

step "journald, connection, /metrics"
wait_for "the agent's start in the journal" 30 \
    ct sh -c 'journalctl -u k3sfleet-agent.service -t k3sfleet-agent -o cat | grep -q "agent started"'
ct journalctl -u k3sfleet-coordinator.service -t k3sfleet-coordinator -o cat | grep -q . \
    || fail "no coordinator log lines in the journal"
wait_for "node-1 to show as connected" 60 node_connected
echo "node-1 connected"
metrics=$(nsenter -t "$leader" -n curl -fsS --max-time 10 http://127.0.0.1:9464/metrics)
grep -q '^k3sfleet_agent_info{role="agent",version="' <<<"$metrics" || fail "agent /metrics lacks k3sfleet_agent_info"
grep -q '^k3sfleet_agent_certificate_expiry_timestamp_seconds ' <<<"$metrics" || fail "agent /metrics lacks the certificate expiry"
coordinator_metrics() { nsenter -t "$leader" -n curl -fsS --max-time 10 http://127.0.0.1:9465/metrics; }
agent_counted() { coordinator_metrics | grep -q '^k3sfleet_agents_connected 1$'; }
wait_for "the coordinator's /metrics to count the agent" 30 agent_counted
coordinator_metrics | grep -q '^k3sfleet_node_connected{node="node-1"} 1$' || fail "coordinator /metrics: node-1 not connected"
coordinator_metrics | grep -q '^k3sfleet_node_certificate_expiry_timestamp_seconds{node="node-1"} ' \
    || fail "coordinator /metrics: no certificate expiry for node-1"
echo "/metrics answers (agent :9464, coordinator :9465)"

first_cert=$(ct sha256sum /etc/k3sfleet/agent/agent.crt)
renewed() {
    ct journalctl -u k3sfleet-agent.service -o cat | grep -q "certificate renewed" \
        && [[ $(ct sha256sum /etc/k3sfleet/agent/agent.crt) != "$first_cert" ]]
}
wait_for "the agent to renew its certificate in its sandbox" $((180 - (SECONDS - enrolled_at))) renewed
echo "certificate renewed in place after $((SECONDS - enrolled_at))s"
wait_for "node-1 to reconnect on the renewed certificate" 60 node_connected

step "upgrade to revision 2"
declare -A invocation
for unit in k3sfleet-coordinator k3sfleet-agent; do
    invocation[$unit]=$(unit_property "$unit.service" InvocationID)
done
ct sh -c 'dpkg -i /root/rev2/k3sfleet-coordinator_*.deb /root/rev2/k3sfleet-agent_*.deb' </dev/null
for unit in k3sfleet-coordinator k3sfleet-agent; do
    # shellcheck disable=SC2016 # dpkg-query's format
    [[ $(ct dpkg-query -W -f='${Version}' "$unit") == *-2 ]] || fail "$unit was not upgraded"
    [[ $(ct systemctl is-active "$unit") == active ]] || fail "$unit is not active after the upgrade"
    [[ $(unit_property "$unit.service" InvocationID) != "${invocation[$unit]}" ]] || fail "$unit was not restarted"
done
ct grep -q 'report_flush_interval = "2s"  # local edit' /etc/k3sfleet/coordinator.toml || fail "coordinator.toml lost its edit"
ct grep -q 'address = "127.0.0.1:7443"  # local edit' /etc/k3sfleet/agent.toml || fail "agent.toml lost its edit"
wait_for "node-1 to reconnect after the upgrade" 60 node_connected
echo "upgraded: edits kept, both restarted, node-1 connected"

step "remove, then purge"
ct dpkg -r k3sfleet-agent k3sfleet-coordinator </dev/null
for unit in k3sfleet-coordinator k3sfleet-agent; do
    [[ $(ct systemctl is-active "$unit" || true) != active ]] || fail "$unit still runs after remove"
    ! ct pgrep -f "^/usr/bin/$unit " >/dev/null || fail "a $unit process survived remove"
done
ct test -d /var/lib/k3sfleet/agent || fail "remove deleted the agent's state"
ct test -f /var/lib/k3sfleet/coordinator/coordinator.db || fail "remove deleted the coordinator's database"
ct test -f /etc/k3sfleet/agent.toml || fail "remove deleted a conffile"
purge_log=$(ct dpkg --purge k3sfleet-agent k3sfleet-coordinator 2>&1 </dev/null)
echo "$purge_log"
for gone in /var/lib/k3sfleet/agent /var/lib/k3sfleet/coordinator /etc/k3sfleet/agent \
    /etc/k3sfleet/agent.toml /etc/k3sfleet/coordinator.toml /etc/systemd/system/multi-user.target.wants/k3sfleet-agent.service; do
    ! ct test -e "$gone" || fail "purge left $gone"
done
ct test -f /etc/k3sfleet/pki/ca.key || fail "purge deleted the fleet CA"
grep -q "kept the fleet CA" <<<"$purge_log" || fail "purge did not say it kept the fleet CA"
echo "removed and purged"

echo
echo "nspawn package test: ok"
