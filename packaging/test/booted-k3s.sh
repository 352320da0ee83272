#!/usr/bin/env bash
# K3s under real systemd on a booted Debian 12 (lib/booted.sh), driven
# through the k3sfleet CLI as an operator would:
#
#   1. the stand-in K3s unit written as install.sh writes it (Type=notify,
#      enabled); the agent installs v1, upgrades to v2, rolls back to v1
#      (declarative: again is a no-op), and rolls a release that fails to
#      start back to v1, all through real systemctl; journald holds the
#      service's lines; systemd's READY=1 came from the installed binary.
#   2. power loss in the middle of an install: the container is killed
#      (no shutdown) at each point of the binary swap, booted again, and
#      the agent finds the binary whole (old or new, by digest) and the
#      install settled: finished, rolled back, or known not to have swapped.
#      The command re-sent with its id then finishes as it should.
#
# Hitting each point: strace (on the host) holds the agent for a moment
# before and after each rename it makes, without changing it; the test
# watches the files the swap leaves (intent record, staged link, .previous,
# the binary's digest) and cuts the power while the agent is held at the
# point. A slow-to-start release gives the window during the restart.
#
# Usage: booted-k3s.sh DIR_WITH_DEBS
# Needs root, systemd-container, jq, strace. Takes ~3 min with a cached root.
set -euo pipefail

debs="$(cd "$1" && pwd)"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=packaging/test/lib/booted.sh
source "$here/lib/booted.sh"

standin="${K3SFLEET_STANDIN_K3S:-$here/../../target/debug/k3sfleet-standin-k3s}"
command -v strace >/dev/null || { skip_test "strace is missing (apt-get install strace)"; exit 0; }
[[ -x $standin ]] || fail "no $standin: build it (cargo build -p k3sfleet-standin)"

V1=v1.31.4+k3s1
V2=v1.31.5+k3s1
BROKEN=v1.31.6+k3s1  # fails to start
SLOW=v1.31.7+k3s1    # takes 8 s to say READY=1
releases=/srv/k3s-releases
state=/var/lib/k3sfleet/agent
bin=/usr/local/bin

diagnose() {
    ct systemctl --no-pager status k3s-agent.service k3sfleet-agent.service || true
    ct journalctl --no-pager -n 80 -u k3s-agent.service -u k3sfleet-agent.service || true
}

booted_init
declare -A sha
for spec in "$V1 healthy" "$V2 healthy" "$BROKEN fails-to-start" "$SLOW slow-to-start:8"; do
    read -r version behaviour <<<"$spec"
    sha[$version]=$("$standin" release --dir "$root$releases" --version "$version" --behaviour "$behaviour" --size $((4 << 20)))
done
"$standin" unit --role agent --dir "$root/etc/systemd/system" >/dev/null
ln -s /etc/systemd/system/k3s-agent.service "$root/etc/systemd/system/multi-user.target.wants/k3s-agent.service"
boot
setup_fleet "$debs"

installed_sha() { sha256sum "$root$bin/k3s" | cut -d' ' -f1; }
k3s() { ct k3sfleet k3s "$@" 2>&1; }
# The version whose READY=1 systemd got: the stand-in says it in its status.
ready_version() { unit_property k3s-agent.service StatusText | sed -n 's/^k3s agent \(v[^ ]*\) (stand-in)$/\1/p'; }
expect_running() {
    local version="$1"
    [[ $(installed_sha) == "${sha[$version]}" ]] || fail "the binary is not $version's ($(installed_sha))"
    [[ $(ct systemctl is-active k3s-agent.service) == active ]] || fail "k3s-agent.service is not active"
    [[ $(ready_version) == "$version" ]] || fail "systemd's READY=1 came from $(ready_version), not $version"
}

step "the unit as install.sh writes it"
[[ $(unit_property k3s-agent.service Type) == notify ]] || fail "k3s-agent.service is not Type=notify"
[[ $(ct systemctl is-enabled k3s-agent.service) == enabled ]] || fail "k3s-agent.service is not enabled"
ct test ! -e $bin/k3s || fail "a K3s binary before the first install"

step "install $V1 through the agent"
out=$(k3s install node-1 --version $V1 --local-dir $releases)
echo "$out"
grep -q "succeeded: installed $V1: k3s-agent.service is active on $V1" <<<"$out" || fail "install $V1"
expect_running $V1
verify=$(ct systemd-analyze verify k3s-agent.service 2>&1 || true)
[[ -z $verify ]] || fail "systemd-analyze verify k3s-agent.service: $verify"
[[ $(ct stat -c '%a %U:%G' $bin/k3s) == "755 root:root" ]] || fail "the binary's mode: $(ct stat -c '%a %U:%G' $bin/k3s)"
ct journalctl -u k3s-agent.service -o cat | grep -q "Starting k3s agent $V1 (stand-in)" \
    || fail "journald has no line of K3s $V1"

step "upgrade to $V2"
out=$(k3s install node-1 --version $V2 --local-dir $releases)
echo "$out"
grep -q "succeeded: installed $V2" <<<"$out" || fail "upgrade to $V2"
expect_running $V2
[[ $(sha256sum "$root$bin/k3s.previous" | cut -d' ' -f1) == "${sha[$V1]}" ]] || fail "$V1 was not kept as k3s.previous"
ct journalctl -u k3s-agent.service -o cat | grep -q "k3s stand-in $V1: stopping on SIGTERM" \
    || fail "journald does not show $V1 stopped by the restart"

step "roll back to $V1 (declarative: a second run changes nothing)"
out=$(k3s rollback node-1 --to $V1 --sha256 "${sha[$V1]}")
echo "$out"
grep -q "succeeded: rolled back from $V2 to $V1" <<<"$out" || fail "rollback"
expect_running $V1
invocation=$(unit_property k3s-agent.service InvocationID)
out=$(k3s rollback node-1 --to $V1 --sha256 "${sha[$V1]}")
grep -q "no-op: " <<<"$out" || fail "the second rollback was not a no-op: $out"
[[ $(unit_property k3s-agent.service InvocationID) == "$invocation" ]] || fail "the second rollback restarted K3s"

step "a release that fails to start is rolled back"
status=0
out=$(k3s install node-1 --version $BROKEN --local-dir $releases --health-timeout 30s) || status=$?
echo "$out"
((status != 0)) || fail "installing a broken release succeeded"
grep -q "$BROKEN did not come up healthy: systemctl restart k3s-agent.service failed" <<<"$out" || fail "no reason given"
grep -q "rolled back to $V1, k3s-agent.service active" <<<"$out" || fail "not rolled back"
expect_running $V1
ct journalctl -u k3s-agent.service -o cat | grep -q 'stand-in: failing on purpose' \
    || fail "journald lacks the broken release's fatal line"

# ---- power loss ----

# Holds the agent 1.5 s before and after every rename it makes.
hold_renames() {
    local pid
    pid=$(host_pid_of k3sfleet-agent.service) || fail "cannot find the agent's process"
    strace -f -p "$pid" -o /dev/null -e trace=rename,renameat,renameat2 \
        -e inject=rename,renameat,renameat2:delay_enter=1500000:delay_exit=1500000 2>"$work/strace.log" &
    wait_for "strace to attach to the agent" 10 grep -q attached "$work/strace.log"
}

# The files the swap leaves, as the host sees them: what each point means.
ls_bin() { find "$root$bin" -maxdepth 1 -name "$1" | grep -q .; }
same_file() { [[ $(stat -c %i "$root$bin/k3s") == $(stat -c %i "$root$bin/k3s.previous") ]]; }
at_point() {
    local intent="$root$state/k3s-install.json"
    case "$1" in
    download-done) [[ -e $intent.tmp && ! -e $intent ]] ;;
    intent-recorded) [[ -e $intent ]] && ls_bin '.k3sfleet-previous-*.tmp' ;;
    previous-kept) [[ -e $intent ]] && ! ls_bin '.k3sfleet-previous-*.tmp' && ls_bin '.k3sfleet-download-*.tmp' && same_file ;;
    swapped) [[ -e $intent ]] && [[ $(installed_sha) == "${sha[$2]}" ]] ;;
    restarting) [[ $(installed_sha) == "${sha[$2]}" ]] && [[ $(ct systemctl is-active k3s-agent.service) == activating ]] ;;
    esac
}

# Installs $2 with command id $3, cuts the power at point $1, boots again.
cut_install_at() {
    local point="$1" version="$2" id="$3" deadline
    hold_renames
    ct k3sfleet k3s install node-1 --version "$version" --local-dir $releases --id "$id" >"$work/$id.log" 2>&1 &
    local cli=$!
    deadline=$((SECONDS + 60))
    until at_point "$point" "$version"; do
        ((SECONDS < deadline)) || fail "the install never reached $point: $(cat "$work/$id.log")"
        sleep 0.05
    done
    power_cut
    wait "$cli" 2>/dev/null || true
    echo "power cut at $point while installing $version"
    boot
    wait_for "node-1 to reconnect" 60 node_connected
}

# After the boot: the binary is whole and the one expected, nothing is left
# half done, and the journal says how the install was settled.
expect_settled() {
    local version="$1" how="$2"
    wait_for "the interrupted install to be settled" 120 sh -c "[ ! -e '$root$state/k3s-install.json' ]"
    wait_for "k3s-agent.service to run $version" 60 expect_running "$version"
    expect_running "$version"
    ! ls_bin '.k3sfleet-*.tmp' || fail "leftovers beside the binary: $(ls -A "$root$bin")"
    [[ ! -e $root$state/k3s-install.json.tmp ]] || fail "a half-written intent was left"
    local said="no install was recorded: nothing to settle"
    if [[ -n $how ]]; then
        said=$(ct journalctl -b -u k3sfleet-agent.service -o cat | grep -o "settled an interrupted K3s install: .*$how.*") \
            || fail "the journal does not say the install was settled ($how): $(ct journalctl -b -u k3sfleet-agent.service -o cat | tail -5)"
    fi
    echo "binary whole: $version (sha256 ${sha[$version]:0:12}); $said"
}

# The command re-sent with its id: the journal says it was interrupted.
resend() {
    local version="$1" id="$2" expect="$3" out
    out=$(k3s install node-1 --version "$version" --local-dir $releases --id "$id" || true)
    grep -q "an earlier run was interrupted by a restart; running again" <<<"$out" || fail "no resume: $out"
    grep -q "$expect" <<<"$out" || fail "the re-sent install: $out (expected $expect)"
    echo "re-sent $id: $(grep -o "$expect.*" <<<"$out" | head -1)"
}

step "power cut after the download, before the intent is recorded"
cut_install_at download-done $V2 cut-1
expect_settled $V1 ""
resend $V2 cut-1 "succeeded: installed $V2"
k3s rollback node-1 --to $V1 >/dev/null

step "power cut after the intent is recorded, before the previous binary is kept"
cut_install_at intent-recorded $V2 cut-2
expect_settled $V1 "interrupted before the swap: the binary is the one before it"
resend $V2 cut-2 "succeeded: installed $V2"
k3s rollback node-1 --to $V1 >/dev/null

step "power cut after the previous binary is kept, before the swap"
cut_install_at previous-kept $V2 cut-3
expect_settled $V1 "interrupted before the swap"

step "power cut right after the swap to a release that fails to start"
cut_install_at swapped $BROKEN cut-4
expect_settled $V1 "interrupted after the swap .*rolled back to $V1"

step "power cut right after the swap"
cut_install_at swapped $V2 cut-5
expect_settled $V2 "interrupted after the swap .*k3s-agent.service is active on $V2"
resend $V2 cut-5 "no-op: already at $V2"

step "power cut while the new release starts"
cut_install_at restarting $SLOW cut-6
expect_settled $SLOW "interrupted after the swap .*k3s-agent.service is active on $SLOW"

echo
echo "booted K3s test: ok"
