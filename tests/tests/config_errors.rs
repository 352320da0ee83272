//! Bad configuration makes the daemons exit non-zero with a message that names
//! the file and the key (or the files) at fault.

use std::path::Path;
use std::process::Command;

use k3sfleet_pki::Role;
use k3sfleet_tests::{TestPki, bin};

/// Runs a binary and returns (exit code, stderr).
fn run(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(bin(binary)).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn coordinator_config(dir: &Path, pki: &TestPki, extra: &str) -> String {
    let server = pki.server();
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("data").display(),
            pki.ca_cert().display(),
            server.cert.display(),
            server.key.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn agent_config(dir: &Path, pki: &TestPki, cert: &Path, key: &Path, extra: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "role = \"agent\"\nstate_dir = \"{}\"\n{extra}\n[coordinator]\naddress = \"127.0.0.1:1\"\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("state").display(),
            pki.ca_cert().display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn coordinator_unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let config = coordinator_config(dir.path(), &pki, "lisen = \"x\"");
    let (code, stderr) = run("k3sfleet-coordinator", &["run", "--config", &config]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&config) && stderr.contains("lisen"),
        "{stderr}"
    );
}

#[test]
fn coordinator_missing_config_file_is_named() {
    let (code, stderr) = run(
        "k3sfleet-coordinator",
        &["run", "--config", "/nonexistent/coordinator.toml"],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/coordinator.toml"), "{stderr}");
}

#[test]
fn coordinator_mismatched_certificate_and_key_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let other = pki.issue(Role::Admin, "someone");
    let config = coordinator_config(dir.path(), &pki, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &pki.server().key.display().to_string(),
        &other.key.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let (code, stderr) = run("k3sfleet-coordinator", &["run", "--config", &config]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("coordinator.crt") && stderr.contains("someone.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn agent_unreadable_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let files = pki.issue(Role::Agent, "worker-01");
    std::fs::write(&files.cert, "garbage\n").unwrap();
    let config = agent_config(dir.path(), &pki, &files.cert, &files.key, "");
    let (code, stderr) = run("k3sfleet-agent", &["run", "--config", &config]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&files.cert.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn agent_node_name_must_match_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let files = pki.issue(Role::Agent, "worker-01");
    let config = agent_config(
        dir.path(),
        &pki,
        &files.cert,
        &files.key,
        "node_name = \"worker-02\"",
    );
    let (code, stderr) = run("k3sfleet-agent", &["run", "--config", &config]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("worker-01") && stderr.contains("worker-02"),
        "{stderr}"
    );
}

#[test]
fn agent_bad_duration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let files = pki.issue(Role::Agent, "worker-01");
    let config = agent_config(
        dir.path(),
        &pki,
        &files.cert,
        &files.key,
        "[report]\ninterval = \"often\"",
    );
    let (code, stderr) = run("k3sfleet-agent", &["run", "--config", &config]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("interval") && stderr.contains("often"),
        "{stderr}"
    );
}

#[test]
fn cli_without_configuration_says_what_is_missing() {
    let output = Command::new(bin("k3sfleet"))
        .env_clear()
        .env("HOME", "/nonexistent")
        .arg("nodes")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--coordinator") && stderr.contains("K3SFLEET_COORDINATOR"),
        "{stderr}"
    );
}

/// `check-config` runs the checks `run` makes before starting, and nothing
/// else: package scripts start a service only when it passes.
#[test]
fn check_config_passes_only_when_the_daemon_could_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let files = pki.issue(Role::Agent, "worker-01");

    let agent = agent_config(dir.path(), &pki, &files.cert, &files.key, "");
    let output = Command::new(bin("k3sfleet-agent"))
        .args(["check-config", "--config", &agent])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ok (node worker-01)"), "{stdout}");
    // Checked, not started: no state directory was made.
    assert!(!dir.path().join("state").exists());

    let missing = dir.path().join("missing.crt");
    let agent = agent_config(dir.path(), &pki, &missing, &files.key, "");
    let (code, stderr) = run("k3sfleet-agent", &["check-config", "--config", &agent]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("tls.cert") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("enroll"), "says what to do next: {stderr}");

    let coordinator = coordinator_config(dir.path(), &pki, "");
    let (code, stderr) = run(
        "k3sfleet-coordinator",
        &["check-config", "--config", &coordinator],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "check-config opened the database"
    );

    let coordinator = coordinator_config(dir.path(), &pki, "report_flush_interval = \"0s\"");
    let (code, stderr) = run(
        "k3sfleet-coordinator",
        &["check-config", "--config", &coordinator],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("report_flush_interval"), "{stderr}");
}
