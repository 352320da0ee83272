//! The coordinator's systemd unit passes `systemd-analyze verify` without a
//! single warning, and keeps its sandbox. (packaging/test/nspawn.sh checks it
//! on a booted host, with `systemd-analyze security`.)

use std::process::Command;

const UNIT: &str = include_str!("../../systemd/k3sfleet-coordinator.service");

fn settings() -> Vec<&'static str> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn the_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at this build.
    let unit = UNIT.replace(
        "/usr/bin/k3sfleet-coordinator",
        env!("CARGO_BIN_EXE_k3sfleet-coordinator"),
    );
    assert_ne!(
        unit, UNIT,
        "ExecStart should run /usr/bin/k3sfleet-coordinator"
    );
    let path = dir.path().join("k3sfleet-coordinator.service");
    std::fs::write(&path, unit).unwrap();
    // --man=no: the man page is installed by the package, not on this host.
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}

#[test]
fn the_unit_runs_unprivileged_in_a_strict_sandbox() {
    let settings = settings();
    for needed in [
        "Type=notify",
        "WatchdogSec=60s",
        "User=k3sfleet",
        "StateDirectory=k3sfleet/coordinator",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/k3sfleet/coordinator",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ExecStart=/usr/bin/k3sfleet-coordinator run --config /etc/k3sfleet/coordinator.toml",
    ] {
        assert!(settings.contains(&needed), "{needed} is missing");
    }
    // It would make /etc/k3sfleet, and the fleet CA, writable.
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("ConfigurationDirectory=")),
        "ConfigurationDirectory= makes /etc/k3sfleet writable"
    );
}
