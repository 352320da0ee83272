//! Two coordinators must never drive one database: the second one on a data
//! directory refuses to start, naming the first one's process, and starts
//! once the first is gone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k3sfleet_tests::pki::TestPki;
use k3sfleet_tests::process::{CoordinatorProcess, bin, free_port};

/// Runs `k3sfleet-coordinator run` on `config`; returns (exit code, stderr),
/// or `None` if it is still running after `limit` (then it is killed).
fn run_coordinator(config: &Path, limit: Duration) -> Option<(Option<i32>, String)> {
    let mut child = Command::new(bin("k3sfleet-coordinator"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return Some((
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_second_coordinator_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let mut first = CoordinatorProcess::start(dir.path(), &pki, "");

    // The same data directory, another port.
    let second = dir.path().join("second.toml");
    let config = std::fs::read_to_string(&first.config).unwrap().replace(
        &first.addr.to_string(),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&second, config).unwrap();
    let (code, stderr) = run_coordinator(&second, Duration::from_secs(30))
        .expect("the second coordinator must not run beside the first");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("in use by another coordinator")
            && stderr.contains(&format!("pid {}", first.daemon.pid())),
        "{stderr}"
    );

    // Once the first is gone the directory is free: the second one runs.
    assert_eq!(first.daemon.stop(), Some(0));
    assert_eq!(
        run_coordinator(&second, Duration::from_secs(3)),
        None,
        "the second coordinator should start and keep running"
    );
}
