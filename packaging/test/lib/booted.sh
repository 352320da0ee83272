# shellcheck shell=bash
# The booted-host harness, sourced by the tests under packaging/test: a copy
# of the cached Debian bookworm root (debian-root.sh) boots under
# systemd-nspawn with a private network, and the test drives it from outside
# with nsenter. It can be shut down, killed without a shutdown (power loss:
# every process dies at once, nothing is synced or stopped), and booted again.
#
#   source "$here/lib/booted.sh"
#   booted_init                  # $work, $root, cleanup on exit
#   boot                         # boots $root; $leader is its PID 1
#   ct CMD...                    # runs CMD inside, clean environment
#   power_cut; boot              # SIGKILL to the container's PID 1, boot again
#
# Needs root, systemd-container, debootstrap (first run).

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# A test that cannot run here says so and counts as skipped, never passed,
# as sim/src/skip.rs does for Rust tests: the line goes to
# $K3SFLEET_SKIP_DIR (scripts/test.sh lists them); with
# $K3SFLEET_FORBID_SKIPS (CI) it is a failure. The caller exits 0 after.
skip_test() {
    local test reason="$1"
    test="packaging/test/$(basename "$0")"
    [[ -z ${K3SFLEET_FORBID_SKIPS:-} ]] || fail "$test cannot run here and skips are forbidden (K3SFLEET_FORBID_SKIPS): $reason"
    echo "SKIPPED $test: $reason" >&2
    if [[ -n ${K3SFLEET_SKIP_DIR:-} ]]; then
        echo "$test: $reason" >"$K3SFLEET_SKIP_DIR/${test//[^a-zA-Z0-9]/_}"
    fi
}

nspawn_pid=""
leader=""
boots=0
# Extra systemd-nspawn arguments for every boot (--bind=...).
nspawn_args=()
# Called (if defined by the test) before cleanup when the test failed.
diagnose() { :; }

booted_init() {
    local base
    base="$("$(dirname "${BASH_SOURCE[0]}")/../debian-root.sh")"
    work="$(mktemp -d /var/tmp/k3sfleet-booted.XXXXXX)"
    root="$work/root"
    trap booted_cleanup EXIT
    cp -a --reflink=auto "$base" "$root"
}

booted_cleanup() {
    local status=$?
    if ((status != 0)) && [[ -n $leader ]]; then
        echo "---- diagnostics" >&2
        diagnose >&2 || true
    fi
    shutdown_container
    [[ -n ${work:-} ]] && rm -rf "$work"
    exit "$status"
}

# Runs a command inside the booted container, with a clean environment.
ct() {
    nsenter -t "$leader" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"
}

# Runs a host program in the container's network namespace only (its
# 127.0.0.1 is the container's).
ct_net() { nsenter -t "$leader" -n "$@"; }

# Polls a command every half second until it succeeds.
wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.5
    done
}

# The container's PID 1 (systemd) is nspawn's child.
find_leader() {
    local pid
    for pid in $(pgrep -P "$nspawn_pid"); do
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == systemd ]]; then
            leader=$pid
            return 0
        fi
    done
    return 1
}

# Boots $root and waits until systemd says the boot finished.
boot() {
    local state
    boots=$((boots + 1))
    systemd-nspawn -D "$root" --register=no --keep-unit -b --private-network --console=passive \
        --machine="k3sfleet-test-$$-$boots" "${nspawn_args[@]}" >"$work/boot-$boots.log" 2>&1 &
    nspawn_pid=$!
    leader=""
    wait_for "the container's systemd" 60 find_leader
    find_leader
    state=$(ct timeout 120 systemctl is-system-running --wait || true)
    [[ $state == running || $state == degraded ]] || fail "the container did not boot: $state ($(cat "$work/boot-$boots.log"))"
    echo "booted ($boots): $state (leader pid $leader)"
}

# Power loss for everything in the container: SIGKILL to its PID 1 makes the
# kernel kill every process in its PID namespace at once; no unit stops, no
# file is synced. (The host's page cache survives: what a process wrote
# without fsync is not lost, as it would be on real hardware.)
power_cut() {
    kill -KILL "$leader"
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    leader=""
}

# An orderly shutdown (nspawn turns SIGTERM into one), then the hard way.
shutdown_container() {
    [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null || return 0
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$nspawn_pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    leader=""
}

unit_property() { ct systemctl show -P "$2" "$1"; }

# The PID of a unit's main process as this machine sees it.
host_pid_of() {
    local inside pid
    inside=$(unit_property "$1" MainPID)
    for pid in $(pgrep --ns "$leader" --nslist pid); do
        [[ $(awk '/^NSpid:/ { print $NF }' "/proc/$pid/status" 2>/dev/null) == "$inside" ]] && { echo "$pid"; return 0; }
    done
    return 1
}

# Makes apt inside the root find the cached lists and .debs
# (debian-packages.sh): `apt-get install` there downloads nothing.
offer_debian_packages() {
    local cache
    cache="$("$(dirname "${BASH_SOURCE[0]}")/../debian-packages.sh")"
    cp --reflink=auto "$cache"/lists/* "$root/var/lib/apt/lists/"
    cp --reflink=auto "$cache"/archives/*.deb "$root/var/cache/apt/archives/"
}

# apt-get install inside the container, as an operator runs it.
ct_apt_install() {
    ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null
}

# The fleet inside the container, as the README's install steps set it up:
# both packages from $1 (a directory of .debs), the fleet CA, the
# coordinator running, an admin certificate for root's `k3sfleet`, the
# agent enrolled as node-1 and running. Extra `token create` flags follow.
setup_fleet() {
    local debs="$1" fingerprint
    shift
    mkdir -p "$root/root/debs"
    cp "$debs"/*.deb "$root/root/debs/"
    ct sh -c 'dpkg -i /root/debs/k3sfleet-coordinator_*.deb /root/debs/k3sfleet-agent_*.deb' </dev/null >"$work/dpkg.log" 2>&1 \
        || fail "dpkg -i: $(cat "$work/dpkg.log")"
    fingerprint=$(ct runuser -u k3sfleet -- k3sfleet-coordinator ca init --san 127.0.0.1 --san localhost \
        | sed -n 's/^fleet CA fingerprint: //p')
    [[ $fingerprint == sha256:* ]] || fail "no CA fingerprint in the ca init output"
    ct systemctl start k3sfleet-coordinator.service
    ct install -d -m 0700 /root/.config/k3sfleet
    ct install -d -o k3sfleet -m 0700 /var/lib/k3sfleet/admin
    ct runuser -u k3sfleet -- k3sfleet-coordinator cert issue --role admin --name ci --out-dir /var/lib/k3sfleet/admin >/dev/null
    ct sh -c 'install -m 0600 /var/lib/k3sfleet/admin/ci.* /root/.config/k3sfleet/ && rm -r /var/lib/k3sfleet/admin'
    ct sh -c 'cat >/root/.config/k3sfleet/config.toml' <<'EOF'
coordinator = "127.0.0.1:7443"
ca = "/etc/k3sfleet/pki/ca.crt"
cert = "/root/.config/k3sfleet/ci.crt"
key = "/root/.config/k3sfleet/ci.key"
EOF
    ct sh -c "k3sfleet token create --role agent --ttl 10m --name-pattern 'node-*' $* >/root/agent-token"
    ct sed -i -e 's/^address = .*/address = "127.0.0.1:7443"/' /etc/k3sfleet/agent.toml
    ct k3sfleet-agent enroll --name node-1 --token-file /root/agent-token --ca-fingerprint "$fingerprint" >/dev/null
    ct systemctl start k3sfleet-agent.service
    wait_for "node-1 to show as connected" 60 node_connected
}

node_connected() {
    ct k3sfleet nodes -o json | jq -e '.nodes[] | select(.name == "node-1" and .connectivity == "CONNECTIVITY_CONNECTED")'
}
