//! `k3sfleet-agent check` as an operator runs it, on stand-in hosts: the
//! report, the exit status, JSON, and remediation only when asked.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use k3sfleet_standin::{Distro, HostToml};
use support::Sandbox;

fn write_config(sandbox: &Sandbox, extra: &str) -> std::path::PathBuf {
    let path = sandbox.dir.path().join("agent.toml");
    let text = format!(
        "role = \"server\"\nstate_dir = {:?}\n{extra}\n{}",
        sandbox.state_dir.display().to_string(),
        HostToml::default().render(&sandbox.host)
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_k3sfleet-agent"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("K3SFLEET_AGENT_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn line_of<'a>(output: &'a str, id: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(id))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{output}"))
}

#[test]
fn a_prepared_host_passes_with_exit_status_0() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox
        .host
        .set_tailscale_status(
            r#"{"Version":"1.76.6","BackendState":"Running","Self":{"HostName":"w1","TailscaleIPs":["100.64.0.9"],"Online":true,"KeyExpiry":"2099-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
    let config = write_config(&sandbox, "");
    let (code, out, err) = check(&config, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.starts_with(
            "k3sfleet-agent check: debian 12, kernel 6.1.0-18-amd64, K3s not installed"
        ),
        "{out}"
    );
    assert!(line_of(&out, "longhorn.iscsid").starts_with("OK"), "{out}");
    assert!(
        line_of(&out, "longhorn.data_path").contains("/var/lib/longhorn is on xfs"),
        "{out}"
    );
    assert!(
        line_of(&out, "disk.smart./var/lib/longhorn").contains("SMART passed"),
        "{out}"
    );
    assert!(
        line_of(&out, "tailscale").contains("Running as w1 (100.64.0.9)"),
        "{out}"
    );
    assert!(out.contains("\nOK: 0 errors, 0 warnings,"), "{out}");
    // Checking changes nothing.
    assert!(
        !sandbox
            .host
            .calls()
            .iter()
            .any(|c| c.starts_with("modprobe") || c.contains("enable"))
    );
}

#[test]
fn problems_are_errors_with_advice_and_exit_status_1() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.set_unit("iscsid.socket", "inactive").unwrap();
    sandbox
        .host
        .set_unit("multipathd.service", "active")
        .unwrap();
    sandbox.host.set_package("open-iscsi", false).unwrap();
    sandbox.host.unload_module("dm_crypt").unwrap();
    sandbox
        .host
        .install_k3s(&k3sfleet_standin::k3s_binary(
            "v1.31.4+k3s1",
            k3sfleet_standin::K3sBehaviour::Healthy,
            0,
        ))
        .unwrap();
    sandbox
        .host
        .set_smart(
            "sdb",
            r#"{"smartctl":{"exit_status":8},"smart_status":{"passed":false}}"#,
            8,
        )
        .unwrap();
    let config = write_config(&sandbox, "");

    let (code, out, _) = check(&config, &[]);

    assert_eq!(code, 1, "{out}");
    let iscsid = line_of(&out, "longhorn.iscsid");
    assert!(
        iscsid.starts_with("ERROR") && iscsid.contains("systemctl enable --now iscsid"),
        "{iscsid}"
    );
    assert!(
        line_of(&out, "longhorn.multipathd").starts_with("WARNING"),
        "{out}"
    );
    let packages = line_of(&out, "longhorn.packages");
    assert!(
        packages.contains("apt-get install -y open-iscsi"),
        "{packages}"
    );
    assert!(
        line_of(&out, "longhorn.kernel_modules").contains("--fix-modules"),
        "{out}"
    );
    let k3s = line_of(&out, "k3s.service");
    assert!(
        k3s.starts_with("ERROR")
            && k3s.contains("K3s v1.31.4+k3s1 is installed but k3s.service is not active"),
        "{k3s}"
    );
    assert!(
        line_of(&out, "disk.smart./var/lib/longhorn").starts_with("ERROR"),
        "{out}"
    );
    // Errors are listed first.
    assert!(out.lines().nth(2).unwrap().starts_with("ERROR"), "{out}");

    let (code, json, _) = check(&config, &["--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["overall"], "HEALTH_ERROR");
    let checks = report["checks"].as_array().unwrap();
    let iscsid = checks
        .iter()
        .find(|c| c["id"] == "longhorn.iscsid")
        .unwrap();
    assert_eq!(iscsid["status"], "HEALTH_ERROR");
    assert_eq!(report["k3s"]["installedVersion"], "v1.31.4+k3s1");
    let disk = report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/var/lib/longhorn")
        .unwrap();
    assert_eq!(disk["fsType"], "xfs");
    assert_eq!(disk["device"], "/dev/sdb1");
}

#[test]
fn remediation_runs_only_when_asked_and_reports_exactly_what_changed() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.set_unit("iscsid.socket", "inactive").unwrap();
    sandbox.host.unload_module("dm_crypt").unwrap();
    sandbox.host.unload_module("iscsi_tcp").unwrap();
    let config = write_config(&sandbox, "");

    let (code, out, _) = check(&config, &["--fix-modules", "--fix-iscsid"]);

    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("changed: loaded kernel module iscsi_tcp"),
        "{out}"
    );
    assert!(
        out.contains("changed: loaded kernel module dm_crypt"),
        "{out}"
    );
    assert!(
        !out.contains("loaded kernel module nfs"),
        "nfs was loaded already:\n{out}"
    );
    assert!(
        out.contains(
            "changed: wrote /etc/modules-load.d/k3sfleet-longhorn.conf (iscsi_tcp, dm_crypt, nfs)"
        ),
        "{out}"
    );
    assert!(
        out.contains("changed: enabled and started iscsid.service"),
        "{out}"
    );
    let persisted = std::fs::read_to_string(
        sandbox
            .host
            .path("/etc/modules-load.d/k3sfleet-longhorn.conf"),
    )
    .unwrap();
    assert!(
        persisted.ends_with("iscsi_tcp\ndm_crypt\nnfs\n"),
        "{persisted}"
    );
    assert_eq!(sandbox.host.unit("iscsid.service"), "active");
    assert!(line_of(&out, "longhorn.iscsid").starts_with("OK"), "{out}");

    // Nothing left to fix.
    let (code, out, _) = check(&config, &["--fix-modules", "--fix-iscsid", "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["remediation"]["changes"], serde_json::json!([]));
    assert_eq!(report["remediation"]["failures"], serde_json::json!([]));
}

#[test]
fn remediation_never_installs_packages_and_says_what_failed() {
    let sandbox = Sandbox::new(Distro::Rocky);
    sandbox.host.set_unit("iscsid.socket", "inactive").unwrap();
    sandbox.host.remove_unit("iscsid.service").unwrap();
    sandbox
        .host
        .set_package("iscsi-initiator-utils", false)
        .unwrap();
    sandbox.host.unload_module("iscsi_tcp").unwrap();
    std::fs::remove_file(sandbox.host.path("/.standin/modules-available/iscsi_tcp")).unwrap();
    let config = write_config(&sandbox, "");

    let (code, out, _) = check(&config, &["--fix-modules", "--fix-iscsid"]);

    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAILED:  modprobe iscsi_tcp failed: modprobe: FATAL: Module iscsi_tcp not found"
        ),
        "{out}"
    );
    assert!(
        out.contains("FAILED:  iscsid.service is not installed: install iscsi-initiator-utils first (`dnf install -y iscsi-initiator-utils`)"),
        "{out}"
    );
    assert!(
        !sandbox.host.calls().iter().any(|c| c.contains("install")),
        "{:?}",
        sandbox.host.calls()
    );
    // On the RHEL family a missing iscsi_tcp is an error.
    assert!(
        line_of(&out, "longhorn.kernel_modules").starts_with("ERROR"),
        "{out}"
    );
    assert!(
        line_of(&out, "longhorn.packages").contains("dnf install -y iscsi-initiator-utils"),
        "{out}"
    );
}

#[test]
fn a_bad_config_names_the_key_and_exits_2() {
    let sandbox = Sandbox::new(Distro::Debian);
    let path = sandbox.dir.path().join("bad.toml");
    std::fs::write(&path, "[host]\ncheck_interval = \"soon\"\n").unwrap();
    let (code, _, err) = check(&path, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("check_interval") && err.contains("soon"),
        "{err}"
    );
    assert!(err.contains("bad.toml"), "{err}");

    std::fs::write(
        &path,
        "[host.disks]\nfree_warning_ratio = 0.1\nfree_error_ratio = 0.2\n",
    )
    .unwrap();
    let (code, _, err) = check(&path, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("host.disks.free_error_ratio"), "{err}");

    let (code, _, err) = check(&sandbox.dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");
}
