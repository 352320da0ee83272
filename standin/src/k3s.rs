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
/// real binary prints, `server`/`agent` start (or not, per `behaviour`) and,
/// on hosts with a stand-in kubelet configured (`.standin/kubelet.env`:
/// KUBELET, API, NODE, KUBELET_ARGS), replace the running kubelet, and
/// `etcd-snapshot save --name N` logs `Snapshot N-<host>-<time> saved.`.
/// `size` pads it (with a comment after `exit`) to a realistic size for
/// download tests; the padding is deterministic so equal inputs give equal
/// bytes (and checksums).
pub fn k3s_binary(version: &str, behaviour: K3sBehaviour, size: usize) -> Vec<u8> {
    let start = match &behaviour {
        K3sBehaviour::Healthy | K3sBehaviour::ClaimsVersion(_) => "exit 0".to_string(),
        K3sBehaviour::FailsToStart => {
            "echo 'level=fatal msg=\"stand-in: failing on purpose\"' >&2; exit 1".to_string()
        }
        K3sBehaviour::HangsOnStart => "exec sleep 3600".to_string(),
        K3sBehaviour::SlowToStart(seconds) => format!("sleep {seconds}; exit 0"),
    };
    let claimed = match &behaviour {
        K3sBehaviour::ClaimsVersion(other) => other.as_str(),
        _ => version,
    };
    // With a kubelet configured (the demo's hosts), starting K3s replaces the
    // running stand-in kubelet with one of this version; a failing binary
    // leaves none, so the node stops heartbeating, as a crashed K3s would.
    let kubelet = match &behaviour {
        K3sBehaviour::Healthy | K3sBehaviour::ClaimsVersion(_) | K3sBehaviour::SlowToStart(_) => {
            format!(
                r#"setsid "$KUBELET" --api "$API" --node "$NODE" --version {claimed} $KUBELET_ARGS \
                >> "$S/kubelet.log" 2>&1 < /dev/null &
            echo $! > "$S/kubelet.pid""#
            )
        }
        K3sBehaviour::FailsToStart | K3sBehaviour::HangsOnStart => ":".to_string(),
    };
    let mut script = format!(
        r#"#!/bin/sh
# k3s stand-in {version}

# As a unit restart does, stop the old K3s before starting the new one: its
# kubelet holds ports the new one needs. Gone or a zombie counts as stopped.
stop_kubelet() {{
    kill "$1" 2>/dev/null || return 0
    i=0
    while [ $i -lt 100 ]; do
        state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
        [ -z "$state" ] || [ "$state" = Z ] && return 0
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
        if [ -n "$K3SFLEET_STANDIN_ROOT" ] && [ -f "$S/kubelet.env" ]; then
            . "$S/kubelet.env"
            [ -f "$S/kubelet.pid" ] && stop_kubelet "$(cat "$S/kubelet.pid")"
            rm -f "$S/kubelet.pid"
            {kubelet}
        fi
        {start}
        ;;
    etcd-snapshot)
        name=on-demand
        while [ $# -gt 0 ]; do
            [ "$1" = --name ] && name=$2
            shift
        done
        echo "time=\"2024-05-01T10:00:00Z\" level=info msg=\"Snapshot $name-$(hostname)-1714557600 saved.\"" >&2
        ;;
    *)
        echo "k3s stand-in: unsupported: $*" >&2
        exit 1
        ;;
esac
exit 0
"#
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
