//! The `k3sfleet-kubesim` binary: prints where it listens, writes a kubeconfig, and refuses a
//! bad scenario naming the file and the field.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_k3sfleet-kubesim");

#[test]
fn serves_a_scenario_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/drain-blocked.toml");
    let mut child = Command::new(BINARY)
        .args([
            "--scenario",
            scenario,
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig-out",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"));
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let config = std::fs::read_to_string(&kubeconfig).unwrap();
        assert!(config.contains(&format!("server: {url}")), "{config}");
    });
    child.kill().unwrap();
    child.wait().unwrap();
    result.unwrap();
}

#[test]
fn bad_scenario_is_refused_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[[nodes]]\nname = \"a\"\n[[pods]]\nnamespace = \"x\"\nname = \"p\"\nnode = \"b\"\n",
    )
    .unwrap();
    let out = Command::new(BINARY)
        .arg("--scenario")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.toml")
            && stderr.contains("pods[0].node")
            && stderr.contains("\"b\""),
        "{stderr}"
    );

    let out = Command::new(BINARY)
        .args(["--scenario", "/nonexistent.toml", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}
