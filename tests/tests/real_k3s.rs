//! The real tier's stand-in K3s against the real control plane: what a K3s
//! restart, stop and etcd snapshot do to real etcd members, API servers and
//! kubelets (KWOK). These are the behaviours the rollout tests rely on.
//!
//! Needs root and scripts/build-testbed.sh; recorded as skipped otherwise.

use std::time::{Duration, Instant};

use k3sfleet_sim::lab::LabSpec;
use k3sfleet_standin::real::K3sLayout;
use k3sfleet_standin::{K3sBehaviour, k3s_binary};
use k3sfleet_tests::real::{assert_audit_clean, healthy_members, real_lab, real_lab_dir, wait};

const TO: &str = "v1.31.5+k3s1";

fn pid_of(lab: &k3sfleet_sim::lab::Lab, host: &str, component: &str) -> Option<u32> {
    let host = lab.hosts.iter().find(|h| h.name == host)?;
    std::fs::read_to_string(K3sLayout::new(host.host.root()).component_pid(component))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn kubelet_version(lab: &k3sfleet_sim::lab::Lab, node: &str) -> String {
    tokio::task::block_in_place(|| lab.kubelet_versions())
        .into_iter()
        .find(|(name, _)| name == node)
        .map(|(_, version)| version)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_restarts_stops_and_snapshots_act_on_the_real_etcd_control_plane_and_kubelet() {
    let dir = real_lab_dir();
    let Some(mut lab) = real_lab(&dir, LabSpec::small().unwrap()).await else {
        return;
    };
    let started = Instant::now();
    assert_eq!(
        healthy_members(&lab, "server-1").len(),
        3,
        "three healthy members at start"
    );

    // A new binary and a restart of k3s.service on server-2: its etcd member
    // and control plane are new processes, its kubelet reports the new version.
    let before: Vec<Option<u32>> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ]
    .iter()
    .map(|c| pid_of(&lab, "server-2", c))
    .collect();
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let server = lab.host("server-2");
    server
        .host
        .install_k3s(&k3s_binary(TO, K3sBehaviour::Healthy, 1024))
        .unwrap();
    let restart = Instant::now();
    tokio::task::block_in_place(|| server.systemctl("restart")).unwrap();
    wait(
        "server-2's kubelet to report the new version",
        Duration::from_secs(90),
        || kubelet_version(&lab, "server-2") == TO && lab.node_ready("server-2"),
    );
    eprintln!(
        "server-2 restarted to {TO} and Ready in {:.1}s",
        restart.elapsed().as_secs_f64()
    );
    let after: Vec<Option<u32>> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ]
    .iter()
    .map(|c| pid_of(&lab, "server-2", c))
    .collect();
    for (component, (old, new)) in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ]
    .iter()
    .zip(before.iter().zip(&after))
    {
        assert!(
            new.is_some() && new != old,
            "{component}: {old:?} -> {new:?}"
        );
    }
    wait(
        "server-2's etcd member to rejoin",
        Duration::from_secs(60),
        || healthy_members(&lab, "server-1").len() == 3,
    );
    // The other nodes still run the old version.
    assert_eq!(kubelet_version(&lab, "server-1"), "v1.31.4+k3s1");

    // `k3s etcd-snapshot save` takes a real snapshot, named as K3s names it.
    let server = lab.hosts.iter().find(|h| h.name == "server-2").unwrap();
    let mut command = server
        .netns
        .as_ref()
        .unwrap()
        .command(server.host.path("/usr/local/bin/k3s"));
    let output = tokio::task::block_in_place(|| {
        command
            .args(["etcd-snapshot", "save", "--name", "by-hand"])
            .output()
    })
    .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let name = log
        .lines()
        .find_map(|l| l.split("msg=\"Snapshot ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `Snapshot ... saved.` line in {log}"))
        .to_string();
    assert!(name.starts_with("by-hand-server-2-"), "{name}");
    let file = K3sLayout::new(server.host.root()).snapshots().join(&name);
    let status = std::process::Command::new(lab.real().testbed.bin.join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "etcdutl refuses {}: {}",
        file.display(),
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["revision"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(status["totalKey"].as_u64().unwrap_or(0) > 0, "{status}");

    // A stopped K3s stops its kubelet: the real node-lifecycle controller
    // marks the node NotReady; started again, it is Ready.
    let worker = lab.host("worker-02");
    let stop = Instant::now();
    tokio::task::block_in_place(|| worker.systemctl("stop")).unwrap();
    assert_eq!(worker.host.unit("k3s-agent.service"), "inactive");
    assert!(
        pid_of(&lab, "worker-02", "kwok").is_none(),
        "KWOK outlived its K3s"
    );
    wait("worker-02 to go NotReady", Duration::from_secs(60), || {
        !lab.node_ready("worker-02")
    });
    eprintln!(
        "worker-02 NotReady {:.1}s after its K3s stopped",
        stop.elapsed().as_secs_f64()
    );
    let worker = lab.host("worker-02");
    tokio::task::block_in_place(|| worker.systemctl("start")).unwrap();
    wait(
        "worker-02 to be Ready again",
        Duration::from_secs(60),
        || lab.node_ready("worker-02"),
    );

    // A server's etcd check runs against the real member (TLS, client cert).
    let report = k3sfleet_tests::rollout::cli(&lab, &["node", "show", "server-2"]);
    assert!(report.contains("the etcd member is healthy"), "{report}");

    assert_audit_clean(&lab);
    eprintln!("checks took {:.1}s", started.elapsed().as_secs_f64());
    lab.shutdown().await;
}

/// Every process of ours whose command line names `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// A lab that fails to start after its cluster is up (here: a coordinator
/// config it refuses) leaves no etcd member, API server, kubelet, balancer
/// or namespace behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_lab_that_fails_to_start_leaves_nothing_running() {
    if !k3sfleet_sim::skip::runnable(k3sfleet_sim::lab::real::unavailable_reason()) {
        return;
    }
    let dir = real_lab_dir();
    let mut spec = LabSpec::small().unwrap().real();
    spec.coordinator_extra = "no_such_key = 1".into();
    let err = k3sfleet_sim::lab::Lab::start(dir.path(), spec)
        .await
        .expect_err("the coordinator refuses its config");
    eprintln!("the lab failed as it should: {err:#}");
    let left = processes_under(dir.path());
    assert!(left.is_empty(), "left running: {left:#?}");
    let namespaces = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    let ours = format!("k3sf{}-", std::process::id());
    assert!(!namespaces.contains(&ours), "namespaces left: {namespaces}");
}
