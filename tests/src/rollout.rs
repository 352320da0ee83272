//! What the rolling-upgrade tests share: a lab in a temporary directory, the
//! CLI's view of the rollout polled until a condition holds, and the checks
//! every test ends with, asked of the simulated API server rather than of the
//! coordinator.

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

/// The kubelet version each node reports to the simulated API server.
pub fn kubelet_versions(lab: &Lab) -> Vec<(String, String)> {
    lab.kubesim.inspect(|cluster| {
        cluster
            .nodes
            .iter()
            .map(|node| {
                let version = node
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|info| info.kubelet_version.clone())
                    .unwrap_or_default();
                (node.metadata.name.clone().unwrap_or_default(), version)
            })
            .collect()
    })
}

/// What every test must see at the end, whatever happened on the way.
pub fn assert_cluster_safe(lab: &Lab) {
    let stats = lab.kubesim.stats();
    assert_eq!(
        stats.pdb_violations,
        0,
        "PDB violations; logs in {}",
        lab.dir.display()
    );
    assert_eq!(
        lab.cordoned_nodes(),
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
    let status = wait_for_rollout(
        lab,
        &format!("the rollout to {version} to complete"),
        Duration::from_secs(600),
        |s| phase(s) == "completed",
    );
    assert_cluster_safe(lab);
    assert_all_at(lab, version);
    status
}
