//! Stand-in K3s binaries and release directories.

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

/// How a stand-in K3s binary behaves when systemd starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum K3sBehaviour {
    /// Starts (the stand-in systemctl marks the unit active).
    Healthy,
    /// Exits with an error on start (the unit fails).
    FailsToStart,
    /// Never finishes starting (the restart job hangs).
    HangsOnStart,
    /// Starts, taking this many seconds (a real K3s takes a while to
    /// report ready): a window to interrupt an install in.
    SlowToStart(u32),
    /// Starts, but `--version` claims this other version.
    ClaimsVersion(String),
}

/// A shell script that plays K3s `version`: `--version` prints what the
/// real binary prints, `server`/`agent` start (or not, per `behaviour`):
/// under real systemd, as the main process of a unit written the way
/// install.sh writes it ([`k3s_unit`], Type=notify), it sends READY=1 from
/// that process as K3s does, logs to the journal and runs until stopped;
/// under the stand-in systemctl starting is exiting 0. And,
/// on hosts with a stand-in kubelet configured (`.standin/kubelet.env`:
/// KUBELET, API, NODE, KUBELET_ARGS), replace the running kubelet, and
/// `etcd-snapshot save --name N` logs `Snapshot N-<host>-<time> saved.`.
/// On real-tier hosts (`.standin/k3s-real.env`: LAUNCHER) `server`/`agent`
/// replace the running `k3sfleet-standin-k3s-real` (etcd, control plane,
/// KWOK; see [`crate::real`]) and `etcd-snapshot save` takes a real snapshot.
/// `size` pads it (with a comment after `exit`) to a realistic size for
/// download tests; the padding is deterministic so equal inputs give equal
/// bytes (and checksums).
/// The stand-in's life under systemd, in Perl (essential on Debian, in every
/// minimal root; the shell cannot send a datagram): READY=1 to
/// $NOTIFY_SOCKET, then sleep until SIGTERM. Arguments: version, role.
const NOTIFY_READY: &str = r#"use strict; use Socket; use IO::Socket::UNIX;
my ($version, $role) = @ARGV;
$0 = "/usr/local/bin/k3s $role";
$| = 1;
my $to = $ENV{NOTIFY_SOCKET};
$to =~ s/^@/\0/;
my $systemd = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $to)
    or die qq(k3s stand-in: cannot reach systemd at $ENV{NOTIFY_SOCKET}: $!\n);
$SIG{TERM} = sub { print qq(level=info msg="k3s stand-in $version: stopping on SIGTERM"\n); exit 0 };
print qq(level=info msg="Starting k3s $role $version (stand-in)"\n);
$systemd->send(qq(READY=1\nSTATUS=k3s $role $version (stand-in)\n))
    or die qq(k3s stand-in: cannot notify systemd: $!\n);
print qq(level=info msg="k3s $role $version is up; told systemd READY=1"\n);
sleep while 1;
"#;

/// The unit install.sh writes for a K3s `role` ("server" or "agent"):
/// its file name under /etc/systemd/system and its text, with the binary at
/// /usr/local/bin/k3s (k3s-io/k3s install.sh, create_systemd_service_file;
/// SYSTEMD_TYPE is notify for both roles).
pub fn k3s_unit(role: &str) -> (String, String) {
    let name = match role {
        "server" => "k3s.service".to_string(),
        other => format!("k3s-{other}.service"),
    };
    let text = format!(
        r#"[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/{name}.env
KillMode=process
Delegate=yes
User=root
# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \
    {role}

"#
    );
    (name, text)
}

pub fn k3s_binary(version: &str, behaviour: K3sBehaviour, size: usize) -> Vec<u8> {
    let start = match &behaviour {
        K3sBehaviour::Healthy | K3sBehaviour::ClaimsVersion(_) => "serve \"$1\"".to_string(),
        K3sBehaviour::FailsToStart => {
            "echo 'level=fatal msg=\"stand-in: failing on purpose\"' >&2; exit 1".to_string()
        }
        K3sBehaviour::HangsOnStart => "exec sleep 3600".to_string(),
        K3sBehaviour::SlowToStart(seconds) => format!("sleep {seconds}; serve \"$1\""),
    };
    let claimed = match &behaviour {
        K3sBehaviour::ClaimsVersion(other) => other.as_str(),
        _ => version,
    };
    // With a kubelet configured (the demo's hosts), starting K3s replaces the
    // running stand-in kubelet with one of this version; a failing binary
    // leaves none, so the node stops heartbeating, as a crashed K3s would.
    let starts = matches!(
        behaviour,
        K3sBehaviour::Healthy | K3sBehaviour::ClaimsVersion(_) | K3sBehaviour::SlowToStart(_)
    );
    let kubelet = if starts {
        format!(
            r#"setsid "$KUBELET" --api "$API" --node "$NODE" --version {claimed} $KUBELET_ARGS \
                >> "$S/kubelet.log" 2>&1 < /dev/null &
            echo $! > "$S/kubelet.pid""#
        )
    } else {
        ":".to_string()
    };
    // Started once it has read its configuration; an early exit fails the unit.
    let real = if starts {
        format!(
            r#"setsid "$LAUNCHER" run --root "$K3SFLEET_STANDIN_ROOT" --version {claimed} \
                >> "$S/k3s-real.log" 2>&1 < /dev/null &
            pid=$!
            echo $pid > "$S/kubelet.pid"
            i=0
            while [ ! -s "$S/k3s-real.started" ] && [ $i -lt 200 ]; do
                alive $pid || {{ echo "k3s exited at start: see $S/k3s-real.log" >&2; exit 1; }}
                sleep 0.1
                i=$((i + 1))
            done"#
        )
    } else {
        ":".to_string()
    };
    let mut script = format!(
        r#"#!/bin/sh
# k3s stand-in {version}

# Gone or a zombie counts as not running.
alive() {{
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$state" ] && [ "$state" != Z ]
}}

# Started by systemd as a unit's main process (install.sh's units are
# Type=notify): say READY=1 from this process, as K3s does, log to the journal
# and run until stopped. Otherwise (the stand-in systemctl) starting is exiting 0.
serve() {{
    if [ -z "$NOTIFY_SOCKET" ] || [ "$SYSTEMD_EXEC_PID" != "$$" ]; then
        exit 0
    fi
    exec perl -e '{notify}' "{claimed}" "$1"
}}

# As a unit restart does, stop the old K3s before starting the new one: its
# kubelet holds ports the new one needs. Waits up to $2 tenths of a second.
stop_kubelet() {{
    kill "$1" 2>/dev/null || return 0
    i=0
    while [ $i -lt "$2" ]; do
        alive "$1" || return 0
        sleep 0.1
        i=$((i + 1))
    done
}}

case "$1" in
    --version | -v | version)
        echo "k3s version {claimed} (5a2a1f5e)"
        echo "go version go1.22.9"
        ;;
    server | agent)
        S="$K3SFLEET_STANDIN_ROOT/.standin"
        if [ -n "$K3SFLEET_STANDIN_ROOT" ] && [ -f "$S/k3s-real.env" ]; then
            . "$S/k3s-real.env"
            # etcd and the API server take a few seconds to shut down cleanly.
            [ -f "$S/kubelet.pid" ] && stop_kubelet "$(cat "$S/kubelet.pid")" 300
            rm -f "$S/kubelet.pid" "$S/k3s-real.started"
            {real}
        elif [ -n "$K3SFLEET_STANDIN_ROOT" ] && [ -f "$S/kubelet.env" ]; then
            . "$S/kubelet.env"
            [ -f "$S/kubelet.pid" ] && stop_kubelet "$(cat "$S/kubelet.pid")" 100
            rm -f "$S/kubelet.pid"
            {kubelet}
        fi
        # A host's own pace: some take longer to bring K3s back than others.
        [ -n "$K3SFLEET_STANDIN_ROOT" ] && [ -f "$S/k3s-start-delay" ] && sleep "$(cat "$S/k3s-start-delay")"
        {start}
        ;;
    etcd-snapshot)
        name=on-demand
        while [ $# -gt 0 ]; do
            [ "$1" = --name ] && name=$2
            shift
        done
        # The host root: this binary is <root>/usr/local/bin/k3s.
        R="${{K3SFLEET_STANDIN_ROOT:-$(cd "$(dirname "$0")/../../.." && pwd)}}"
        if [ -f "$R/.standin/k3s-real.env" ]; then
            . "$R/.standin/k3s-real.env"
            exec "$LAUNCHER" snapshot --root "$R" --name "$name"
        fi
        echo "time=\"2024-05-01T10:00:00Z\" level=info msg=\"Snapshot $name-$(hostname)-1714557600 saved.\"" >&2
        ;;
    *)
        echo "k3s stand-in: unsupported: $*" >&2
        exit 1
        ;;
esac
exit 0
"#,
        notify = NOTIFY_READY,
    )
    .into_bytes();
    if script.len() < size {
        script.extend_from_slice(b"# padding\n");
        let mut i = 0u32;
        while script.len() < size {
            script.extend_from_slice(
                format!("# {i:08x} padding padding padding padding\n").as_bytes(),
            );
            i += 1;
        }
        script.truncate(size);
    }
    script
}

/// The binary asset and checksum file names of this machine's architecture.
pub fn arch_assets() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("k3s-arm64", "sha256sum-arm64.txt"),
        "arm" => ("k3s-armhf", "sha256sum-arm.txt"),
        "s390x" => ("k3s-s390x", "sha256sum-s390x.txt"),
        _ => ("k3s", "sha256sum-amd64.txt"),
    }
}

/// Writes a release laid out like GitHub's (`<dir>/<version>/<asset>`): the
/// binary for this architecture and its `sha256sum-<arch>.txt` (with an
/// airgap-images line first, as the real file has). Returns the binary's
/// SHA-256 in hex.
pub fn write_release(dir: &Path, version: &str, binary: &[u8]) -> io::Result<String> {
    let (asset, checksums) = arch_assets();
    let release = dir.join(version);
    std::fs::create_dir_all(&release)?;
    std::fs::write(release.join(asset), binary)?;
    let digest = hex::encode(Sha256::digest(binary));
    let images = hex::encode(Sha256::digest(format!("images {version}")));
    std::fs::write(
        release.join(checksums),
        format!("{images}  k3s-airgap-images-amd64.tar.zst\n{digest}  {asset}\n"),
    )?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_deterministic_and_padded() {
        let a = k3s_binary("v1.31.4+k3s1", K3sBehaviour::Healthy, 100_000);
        let b = k3s_binary("v1.31.4+k3s1", K3sBehaviour::Healthy, 100_000);
        assert_eq!(a, b);
        assert_eq!(a.len(), 100_000);
        assert_ne!(
            a,
            k3s_binary("v1.31.5+k3s1", K3sBehaviour::Healthy, 100_000)
        );
    }

    #[test]
    fn units_are_written_as_install_sh_writes_them() {
        let (name, text) = k3s_unit("agent");
        assert_eq!(name, "k3s-agent.service");
        for line in [
            "Type=notify",
            "KillMode=process",
            "Delegate=yes",
            "Restart=always",
            "RestartSec=5s",
            "TimeoutStartSec=0",
            "ExecStartPre=-/sbin/modprobe br_netfilter",
            "EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env",
            "ExecStart=/usr/local/bin/k3s \\\n    agent\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(k3s_unit("server").0, "k3s.service");
    }

    /// Outside systemd (no NOTIFY_SOCKET, or a child of the unit's main
    /// process) a start is an exit 0; the Perl half is checked by the
    /// booted-host tests (packaging/test/booted-k3s.sh).
    #[test]
    fn started_outside_systemd_a_healthy_binary_exits_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k3s");
        std::fs::write(&path, k3s_binary("v1.31.4+k3s1", K3sBehaviour::Healthy, 0)).unwrap();
        for env in [
            vec![],
            vec![("NOTIFY_SOCKET", "/nonexistent"), ("SYSTEMD_EXEC_PID", "1")],
        ] {
            let status = std::process::Command::new("sh")
                .arg(&path)
                .arg("agent")
                .env_remove("NOTIFY_SOCKET")
                .envs(env)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    #[test]
    fn releases_carry_matching_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let binary = k3s_binary("v1.31.4+k3s1", K3sBehaviour::Healthy, 0);
        let digest = write_release(dir.path(), "v1.31.4+k3s1", &binary).unwrap();
        let (asset, checksums) = arch_assets();
        let text =
            std::fs::read_to_string(dir.path().join("v1.31.4+k3s1").join(checksums)).unwrap();
        assert!(text.contains(&format!("{digest}  {asset}\n")));
    }
}
