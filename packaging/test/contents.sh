#!/usr/bin/env bash
# What the built packages contain and declare, without installing them:
#   - each .deb and .rpm holds its binaries, unit, config and docs (and the
#     coordinator's ClusterRole) at the expected paths, and the config is a
#     dpkg conffile / rpm %config(noreplace);
#   - maintainer scripts and rpm scriptlets are present and do what they say;
#   - the glibc the binaries need is no newer than the packages declare
#     (libc6 (>= 2.34), glibc 2.34: Debian 12, Ubuntu 22.04, RHEL/Rocky/Alma 9).
#
# Usage: contents.sh DIR   (the output of scripts/package.sh)
# Needs dpkg-deb, rpm, objdump. Takes a few seconds.
set -euo pipefail

dir="$(cd "$1" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
declared_glibc=2.34

fail() { echo "FAIL: $*" >&2; exit 1; }
has_line() { grep -qxF -- "$2" <<<"$1" || fail "$3: missing $2"; }
one() {
    # shellcheck disable=SC2206 # $1 is a glob
    local matches=("$dir"/$1)
    [[ ${#matches[@]} -eq 1 && -f ${matches[0]} ]] || fail "expected one $1 in $dir"
    echo "${matches[0]}"
}

agent_deb=$(one 'k3sfleet-agent_*.deb')
coordinator_deb=$(one 'k3sfleet-coordinator_*.deb')
agent_rpm=$(one 'k3sfleet-agent-*.rpm')
coordinator_rpm=$(one 'k3sfleet-coordinator-*.rpm')

echo "== .deb contents and control"
deb_files() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's|^\./|/|'; }
files=$(deb_files "$agent_deb")
for path in /usr/bin/k3sfleet-agent /lib/systemd/system/k3sfleet-agent.service /etc/k3sfleet/agent.toml; do
    has_line "$files" "$path" "$agent_deb"
done
files=$(deb_files "$coordinator_deb")
for path in /usr/bin/k3sfleet-coordinator /usr/bin/k3sfleet /lib/systemd/system/k3sfleet-coordinator.service \
    /etc/k3sfleet/coordinator.toml /usr/lib/sysusers.d/k3sfleet-coordinator.conf \
    /usr/share/man/man1/k3sfleet.1.gz /usr/share/man/man1/k3sfleet-drain.1.gz \
    /usr/share/bash-completion/completions/k3sfleet /usr/share/zsh/vendor-completions/_k3sfleet \
    /usr/share/fish/vendor_completions.d/k3sfleet.fish /usr/share/k3sfleet/monitoring/k3sfleet-alerts.yml \
    /usr/share/k3sfleet/monitoring/k3sfleet-fleet.json /usr/share/k3sfleet/kubernetes/coordinator-rbac.yaml; do
    has_line "$files" "$path" "$coordinator_deb"
done
for pair in "$agent_deb:agent" "$coordinator_deb:coordinator"; do
    deb=${pair%:*} name=${pair#*:}
    rm -rf "$work/control" && dpkg-deb -e "$deb" "$work/control"
    has_line "$(cat "$work/control/conffiles")" "/etc/k3sfleet/$name.toml" "$deb conffiles"
    for script in postinst prerm postrm; do
        [[ -x $work/control/$script ]] || fail "$deb has no $script"
        sh -n "$work/control/$script" || fail "$deb $script does not parse"
    done
    grep -q "check-config" "$work/control/postinst" || fail "$deb postinst starts without checking the config"
    grep -q "rm -rf /var/lib/k3sfleet/$name" "$work/control/postrm" || fail "$deb postrm does not purge state"
    depends=$(dpkg-deb -f "$deb" Depends)
    [[ $depends == *"libc6 (>= $declared_glibc)"* ]] || fail "$deb Depends lacks libc6 (>= $declared_glibc): $depends"
    [[ $depends == *"systemd (>= 247)"* ]] || fail "$deb Depends lacks systemd (>= 247): $depends"
done

echo "== .rpm contents, config flags and scriptlets"
rpm_files() { rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$1" 2>/dev/null; }
files=$(rpm_files "$agent_rpm")
has_line "$files" " /usr/bin/k3sfleet-agent" "$agent_rpm"
has_line "$files" " /usr/lib/systemd/system/k3sfleet-agent.service" "$agent_rpm"
has_line "$files" "cn /etc/k3sfleet/agent.toml" "$agent_rpm (config noreplace)"
files=$(rpm_files "$coordinator_rpm")
for path in " /usr/bin/k3sfleet-coordinator" " /usr/bin/k3sfleet" " /usr/lib/systemd/system/k3sfleet-coordinator.service" \
    " /usr/lib/sysusers.d/k3sfleet-coordinator.conf" "cn /etc/k3sfleet/coordinator.toml" \
    "d /usr/share/man/man1/k3sfleet-drain.1.gz" " /usr/share/zsh/site-functions/_k3sfleet" \
    " /usr/share/k3sfleet/kubernetes/coordinator-rbac.yaml"; do
    has_line "$files" "$path" "$coordinator_rpm"
done
scripts=$(rpm -qp --scripts "$agent_rpm" 2>/dev/null)
for expected in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet" \
    "check-config" "disable --now k3sfleet-agent.service" "try-restart k3sfleet-agent.service"; do
    grep -qF "$expected" <<<"$scripts" || fail "$agent_rpm scriptlets lack: $expected"
done
scripts=$(rpm -qp --scripts "$coordinator_rpm" 2>/dev/null)
for expected in "preinstall scriptlet" "useradd --system" "check-config" \
    "disable --now k3sfleet-coordinator.service" "try-restart k3sfleet-coordinator.service"; do
    grep -qF "$expected" <<<"$scripts" || fail "$coordinator_rpm scriptlets lack: $expected"
done
for rpm_file in "$agent_rpm" "$coordinator_rpm"; do
    requires=$(rpm -qp --requires "$rpm_file" 2>/dev/null)
    grep -qx "systemd >= 247" <<<"$requires" || fail "$rpm_file does not require systemd >= 247"
    needed=$(grep -o 'GLIBC_[0-9.]*' <<<"$requires" | sed 's/GLIBC_//' | sort -V | tail -1)
    [[ $needed == "$declared_glibc" ]] || fail "$rpm_file requires glibc $needed, the README says $declared_glibc"
done

echo "== glibc the binaries need"
dpkg-deb -x "$agent_deb" "$work/agent"
dpkg-deb -x "$coordinator_deb" "$work/coordinator"
for bin in "$work"/agent/usr/bin/* "$work"/coordinator/usr/bin/*; do
    newest=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    [[ $(printf '%s\n%s\n' "$newest" "$declared_glibc" | sort -V | tail -1) == "$declared_glibc" ]] \
        || fail "$(basename "$bin") needs glibc $newest, newer than the declared $declared_glibc"
    echo "$(basename "$bin"): glibc >= $newest, $(du -h "$bin" | cut -f1) stripped"
done
ls -l "$dir"
echo "package contents: ok"
