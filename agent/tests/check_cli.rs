//! `k3sfleet-agent check` as an operator runs it, on stand-in hosts: the
//! report, the exit status, JSON, and remediation only when asked.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use k3sfleet_standin::{Distro, HostToml};
use support::Sandbox;

/// A public key from minisign's own documentation: any valid key will do here.
const OPERATOR_KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

fn write_config(sandbox: &Sandbox, extra: &str) -> std::path::PathBuf {
    write_config_with(sandbox, extra, &HostToml::default())
}

fn write_config_with(sandbox: &Sandbox, extra: &str, host: &HostToml) -> std::path::PathBuf {
    let path = sandbox.dir.path().join("agent.toml");
    let text = format!(
        "role = \"server\"\nstate_dir = {:?}\n{extra}\n{}",
        sandbox.state_dir.display().to_string(),
        host.render(&sandbox.host)
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
    // Without trusted keys the report says that releases are not verified.
    let config = write_config(&sandbox, "");
    let (code, out, err) = check(&config, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        line_of(&out, "k3s.releases").contains("releases are NOT verified"),
        "{out}"
    );

    let trusting = HostToml {
        trusted_keys: vec![OPERATOR_KEY.into()],
        ..HostToml::default()
    };
    let config = write_config_with(&sandbox, "", &trusting);
    let (code, out, err) = check(&config, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        line_of(&out, "k3s.releases").contains("signed by key E7620F1842B4E81F"),
        "{out}"
    );
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
        out.contains(
            "changed: enabled and started iscsid.socket (iscsid starts on the first iscsiadm connection)"
        ),
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
    assert_eq!(sandbox.host.unit("iscsid.socket"), "active");
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
    sandbox.host.remove_unit("iscsid.socket").unwrap();
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
        out.contains("FAILED:  iscsid is not installed (neither iscsid.socket nor iscsid.service exists): install iscsi-initiator-utils first (`dnf install -y iscsi-initiator-utils`)"),
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
fn without_an_iscsid_socket_remediation_enables_the_service() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.remove_unit("iscsid.socket").unwrap();
    let config = write_config(&sandbox, "");

    let (code, out, _) = check(&config, &["--fix-iscsid"]);

    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("changed: enabled and started iscsid.service\n"),
        "{out}"
    );
    assert_eq!(sandbox.host.unit("iscsid.service"), "active");
}

/// A container cannot load modules into the kernel it shares: the fix says
/// so and runs no modprobe; the check says what cannot be told from inside.
#[test]
fn in_a_container_modules_are_not_loaded_and_the_checks_say_why() {
    let sandbox = Sandbox::new(Distro::Debian);
    sandbox.host.unload_module("dm_crypt").unwrap();
    std::fs::create_dir_all(sandbox.host.path("/run/systemd")).unwrap();
    std::fs::write(
        sandbox.host.path("/run/systemd/container"),
        "systemd-nspawn\n",
    )
    .unwrap();
    let config = write_config(&sandbox, "");

    let (code, out, _) = check(&config, &["--fix-modules"]);

    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "FAILED:  not loading dm_crypt: this host is a container (systemd-nspawn), which cannot load kernel modules"
        ),
        "{out}"
    );
    assert!(
        !sandbox
            .host
            .calls()
            .iter()
            .any(|c| c.starts_with("modprobe")),
        "{:?}",
        sandbox.host.calls()
    );
    assert!(
        !sandbox
            .host
            .path("/etc/modules-load.d/k3sfleet-longhorn.conf")
            .exists()
    );
    let modules = line_of(&out, "longhorn.kernel_modules");
    assert!(
        modules.starts_with("WARNING") && modules.contains("container (systemd-nspawn)"),
        "{modules}"
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

/// A fresh host: neither data path exists yet, so both disk checks measure
/// /var/lib, at once. Both must say so; neither may call the other's
/// statfs a hanging filesystem (what every fresh Debian host printed).
#[test]
fn data_paths_that_do_not_exist_yet_are_measured_on_their_parent() {
    let sandbox = Sandbox::new(Distro::Debian);
    for dir in ["/var/lib/longhorn", "/var/lib/rancher"] {
        std::fs::remove_dir_all(sandbox.host.path(dir)).unwrap();
    }
    let config = write_config(&sandbox, "");
    for _ in 0..5 {
        let (_, out, err) = check(&config, &[]);
        assert!(
            !out.contains("hanging") && !err.contains("hanging"),
            "{out}\n{err}"
        );
        for id in [
            "disk.space./var/lib/longhorn",
            "disk.space./var/lib/rancher",
        ] {
            let line = line_of(&out, id);
            assert!(line.starts_with("OK"), "{line}\n{out}");
        }
    }
}
