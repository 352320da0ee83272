//! What the rolling-upgrade tests share: a lab in a temporary directory, the
//! CLI's view of the rollout polled until a condition holds, and the checks
//! every test ends with, asked of the cluster (kubesim's own count, or the
//! real tier's auditor) rather than of the coordinator.

use std::time::{Duration, Instant};

use k3sfleet_sim::lab::{Lab, LabSpec};
use serde_json::Value;

/// Where a test's lab lives; kept afterwards when K3SFLEET_KEEP_LABS is set.
pub fn lab_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("k3sfleet-lab-")
        .tempdir()
        .unwrap();
    if std::env::var_os("K3SFLEET_KEEP_LABS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("lab kept in {}", dir.path().display());
    }
    dir
}

pub async fn small_lab(dir: &tempfile::TempDir, spec: LabSpec) -> Lab {
    Lab::start(dir.path(), spec).await.expect("the lab starts")
}

/// How long [`assert_completes_clean`] lets a rollout stay paused.
const PAUSE_IS_STUCK: Duration = Duration::from_secs(30);

/// `k3sfleet upgrade status -o json`, polled until `done` holds. The CLI
/// blocks, and the simulated cluster runs on this test's runtime: keep the
/// runtime's other worker free for it.
pub fn wait_for_rollout(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = lab.rollout()
                && done(&status)
            {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last status: {:#}\nlogs in {}",
                    lab.rollout().unwrap_or_default(),
                    lab.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

pub fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or_default()
}

pub fn nodes(status: &Value) -> &[Value] {
    status["nodes"].as_array().map_or(&[], Vec::as_slice)
}

pub fn step_of<'a>(status: &'a Value, node: &str) -> &'a str {
    nodes(status)
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["step"].as_str())
        .unwrap_or_default()
}

pub fn cli(lab: &Lab, args: &[&str]) -> String {
    tokio::task::block_in_place(|| lab.cli_ok(args)).expect("the CLI succeeds")
}

/// Starts a rollout to `to` (a 1 s settle unless `extra` sets one).
pub fn start(lab: &Lab, to: &str, extra: &[&str]) {
    let mut args = vec!["upgrade", "start", "--to", to];
    if !extra.contains(&"--settle") {
        args.extend(["--settle", "1s"]);
    }
    args.extend_from_slice(extra);
    cli(lab, &args);
}

/// The kubelet version each node reports to the cluster.
pub fn kubelet_versions(lab: &Lab) -> Vec<(String, String)> {
    tokio::task::block_in_place(|| lab.kubelet_versions())
}

/// What every test must see at the end, whatever happened on the way: no
/// budget broken, no node left cordoned; on the real tier, also none of the
/// coordinator's requests the auditor counts (direct deletes of covered
/// pods, cordons it lifted without having made them).
pub fn assert_cluster_safe(lab: &Lab) {
    let safety = tokio::task::block_in_place(|| lab.safety());
    assert!(
        safety.is_clean(),
        "{}; logs in {}",
        safety.report,
        lab.dir.display()
    );
    assert_eq!(
        tokio::task::block_in_place(|| lab.cordoned_nodes()),
        Vec::<String>::new(),
        "nodes left cordoned; logs in {}",
        lab.dir.display()
    );
}

/// Every node runs `version`: on disk, in its kubelet, and in the agent's report.
pub fn assert_all_at(lab: &Lab, version: &str) {
    for host in &lab.hosts {
        assert_eq!(
            host.installed_version().as_deref(),
            Some(version),
            "{}'s binary",
            host.name
        );
    }
    for (node, kubelet) in kubelet_versions(lab) {
        assert_eq!(kubelet, version, "{node}'s kubelet");
    }
    let fleet: Value = serde_json::from_str(&cli(lab, &["nodes", "-o", "json"])).unwrap();
    for node in fleet["nodes"].as_array().unwrap() {
        assert_eq!(
            node["k3sVersion"], version,
            "{} as its agent reports",
            node["name"]
        );
    }
}

/// Waits for the rollout to complete, then checks what every test must see
/// at the end: the cluster safe and every node at `version`. Returns the
/// final status.
pub fn assert_completes_clean(lab: &Lab, version: &str) -> Value {
    // A pause outlasting a resume's round trip is a failure, said at once
    // rather than after the whole timeout.
    let mut paused_since: Option<Instant> = None;
    let status = wait_for_rollout(
        lab,
        &format!("the rollout to {version} to complete"),
        Duration::from_secs(600),
        |s| {
            if phase(s) != "paused" {
                paused_since = None;
            } else if paused_since.get_or_insert_with(Instant::now).elapsed() > PAUSE_IS_STUCK {
                panic!(
                    "the rollout to {version} paused instead of completing: {s:#}\nlogs in {}",
                    lab.dir.display()
                );
            }
            phase(s) == "completed"
        },
    );
    assert_cluster_safe(lab);
    assert_all_at(lab, version);
    status
}
