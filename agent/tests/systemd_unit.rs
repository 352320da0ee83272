//! The agent's systemd unit passes `systemd-analyze verify` without a
//! single warning, and keeps the settings the agent relies on.

use std::process::Command;

const UNIT: &str = include_str!("../../systemd/k3sfleet-agent.service");

#[test]
fn the_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at this build.
    let unit = UNIT.replace(
        "/usr/bin/k3sfleet-agent",
        env!("CARGO_BIN_EXE_k3sfleet-agent"),
    );
    assert_ne!(unit, UNIT, "ExecStart should run /usr/bin/k3sfleet-agent");
    let path = dir.path().join("k3sfleet-agent.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    // Unknown keys and bad values are only warnings to verify: allow none.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}

#[test]
fn the_unit_keeps_what_the_agent_relies_on() {
    let settings: Vec<&str> = UNIT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60s",
        "Restart=always",
        "StateDirectory=k3sfleet/agent",
        "ProtectSystem=strict",
    ] {
        assert!(settings.contains(&needed), "{needed} is missing");
    }
    // The binary swap, remediation and certificate renewal must stay possible
    // under ProtectSystem=strict.
    let writable = settings
        .iter()
        .find(|l| l.starts_with("ReadWritePaths="))
        .unwrap();
    for path in [
        "/usr/local/bin",
        "/etc/modules-load.d",
        "/etc/k3sfleet/agent",
    ] {
        assert!(
            writable.contains(path),
            "{path} is not writable: {writable}"
        );
    }
    // Loading modules is a remediation; NoNewPrivileges would break SELinux transitions.
    assert!(!settings.contains(&"ProtectKernelModules=yes"));
    assert!(!settings.contains(&"NoNewPrivileges=yes"));
}
