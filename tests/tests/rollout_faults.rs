//! Rolling upgrades on a bad day: each node, the coordinator and the
//! simulated cluster in a network namespace of its own (sim's Lab with
//! `Network::Namespaces`), so "host unreachable" is a pulled cable, not a
//! killed process. Every test ends by asking the simulated API server whether
//! a budget was broken or a node left cordoned.
//!
//! Needs root (namespaces, tmpfs); recorded as skipped, with the reason,
//! otherwise (k3sfleet_sim::skip).

use std::time::{Duration, Instant};

use k3sfleet_kubesim::Faults;
use k3sfleet_sim::lab::{Lab, LabSpec, Network};
use k3sfleet_sim::netns::unavailable_reason;
use k3sfleet_standin::{K3sBehaviour, k3s_binary, write_release};
use k3sfleet_tests::rollout::{
    assert_completes_clean, cli, kubelet_versions, lab_dir, nodes, phase, small_lab, start,
    step_of, wait_for_rollout,
};
use k3sfleet_tests::small_disk::SmallDisk;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const FROM: &str = "v1.31.4+k3s1";
const TO: &str = "v1.31.5+k3s1";
/// Longer than either side waits on a silent session (20 s: the agent's
/// HTTP/2 keepalive timeout, the coordinator's fleet::silence_limit): by the time
/// the cable is back, each side has given the other up.
const LONGER_THAN_LIVENESS: Duration = Duration::from_secs(25);

/// A small lab with a namespace per host, or `None` (and why) when this
/// machine cannot make namespaces.
async fn netns_lab(dir: &tempfile::TempDir, tune: impl FnOnce(&mut LabSpec)) -> Option<Lab> {
    if !k3sfleet_sim::skip::runnable(unavailable_reason()) {
        return None;
    }
    let mut spec = LabSpec::small().unwrap();
    spec.network = Network::Namespaces;
    tune(&mut spec);
    Some(small_lab(dir, spec).await)
}

/// The first worker whose agent has begun installing, from the agents' logs:
/// read every 10 ms, so the fault lands while the install runs (it can be
/// over within the time one `upgrade status` takes).
fn worker_installing(lab: &Lab) -> String {
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(host) = lab
                .hosts
                .iter()
                .filter(|h| !h.server)
                .find(|h| h.agent.log_text().contains(r#"step="checksums""#))
            {
                return host.name.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no worker began installing; the rollout: {:#}\nlogs in {}",
                lab.rollout().unwrap_or_default(),
                lab.dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// The coordinator's view of one node's connection.
fn connectivity(lab: &Lab, node: &str) -> String {
    let fleet: Value = serde_json::from_str(&cli(lab, &["nodes", "-o", "json"])).unwrap();
    fleet["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["connectivity"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Whether the simulated cluster still sees `node` Ready (its kubelet's heartbeats).
fn ready_in_cluster(lab: &Lab, node: &str) -> bool {
    lab.kubesim().inspect(|cluster| {
        cluster
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .and_then(|n| n.status.as_ref()?.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|ready| ready.status == "True")
    })
}

fn wait(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| k3sfleet_tests::wait_until(what, timeout, condition));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_install_is_waited_for_and_finishes_once_its_cable_is_back() {
    let dir = lab_dir();
    let Some(lab) = netns_lab(&dir, |spec| spec.binary_size = 32 * 1024 * 1024).await else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1"]);
    let victim = worker_installing(&lab);
    lab.cut(&victim).unwrap();
    let cut_at = Instant::now();

    // A real network event: the coordinator loses the agent, and the
    // cluster loses the kubelet's heartbeats.
    wait(
        "the coordinator to lose the cut-off agent",
        Duration::from_secs(60),
        || connectivity(&lab, &victim) != "CONNECTIVITY_CONNECTED",
    );
    wait(
        "the cluster to lose the cut-off kubelet",
        Duration::from_secs(60),
        || !ready_in_cluster(&lab, &victim),
    );
    tokio::time::sleep(LONGER_THAN_LIVENESS.saturating_sub(cut_at.elapsed())).await;
    // The rollout holds the node and its slot: no other worker was started.
    let status = lab.rollout().unwrap();
    assert_eq!(phase(&status), "running", "{status:#}");
    let busy: Vec<&str> = nodes(&status)
        .iter()
        .filter(|n| n["role"] != "NODE_ROLE_SERVER")
        .filter(|n| n["step"] != "pending" && n["step"] != "done")
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(busy, [victim.as_str()], "{status:#}");

    lab.heal(&victim).unwrap();
    let status = assert_completes_clean(&lab, TO);
    assert_eq!(step_of(&status, &victim), "done");
    lab.shutdown().await;
}

/// Nodes the rollout has finished.
fn done_nodes(lab: &Lab) -> Vec<String> {
    let status = lab.rollout().unwrap();
    nodes(&status)
        .iter()
        .filter(|n| n["step"] == "done")
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_cut_off_from_everyone_past_liveness_picks_the_rollout_up_once_healed() {
    let dir = lab_dir();
    let Some(lab) = netns_lab(&dir, |spec| spec.binary_size = 16 * 1024 * 1024).await else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1"]);
    worker_installing(&lab);
    lab.cut("coordinator").unwrap();
    let cut_at = Instant::now();

    wait(
        "the coordinator to lose every agent",
        Duration::from_secs(60),
        || {
            let fleet: Value = serde_json::from_str(&cli(&lab, &["nodes", "-o", "json"])).unwrap();
            fleet["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["connectivity"] != "CONNECTIVITY_CONNECTED")
        },
    );
    // From here on it is blind. (Taken after the cut: an answer already
    // on its way when the cable went may still have counted.)
    let done_before = done_nodes(&lab);
    let cordoned_before = lab.cordoned_nodes();
    tokio::time::sleep(LONGER_THAN_LIVENESS.saturating_sub(cut_at.elapsed())).await;
    // Blind, it decides nothing: no node is called done, none is cordoned.
    assert_eq!(done_nodes(&lab), done_before);
    assert_eq!(lab.cordoned_nodes(), cordoned_before);

    lab.heal("coordinator").unwrap();
    assert_completes_clean(&lab, TO);
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_killed_at_random_moments_over_several_rollouts_finishes_each_cleanly() {
    let seed: u64 = std::env::var("K3SFLEET_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill schedule from seed {seed} (K3SFLEET_FAULT_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = lab_dir();
    let Some(mut lab) = netns_lab(&dir, |_| {}).await else {
        return;
    };
    let releases = [TO, "v1.31.6+k3s1", "v1.31.7+k3s1"];
    for version in &releases[1..] {
        write_release(
            &lab.artifacts,
            version,
            &k3s_binary(version, K3sBehaviour::Healthy, lab.spec.binary_size),
        )
        .unwrap();
    }

    let mut kills = Vec::new();
    for version in releases {
        start(&lab, version, &["--max-unavailable", "2"]);
        for _ in 0..3 {
            let delay = Duration::from_millis(rng.random_range(300..5_000));
            tokio::time::sleep(delay).await;
            let status = lab.rollout().unwrap();
            if phase(&status) == "completed" {
                break;
            }
            let underway: Vec<String> = nodes(&status)
                .iter()
                .filter(|n| n["step"] != "pending" && n["step"] != "done")
                .map(|n| {
                    format!(
                        "{}@{}",
                        n["name"].as_str().unwrap_or("?"),
                        n["step"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            kills.push(format!("{version} after {delay:?}: {}", underway.join(" ")));
            tokio::task::block_in_place(|| lab.crash_coordinator()).unwrap();
        }
        assert_completes_clean(&lab, version);
    }
    eprintln!("kill -9 of the coordinator:\n  {}", kills.join("\n  "));
    // Each rollout outlasts its first kill (the servers alone take longer).
    assert!(kills.len() >= releases.len(), "{kills:?}");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_the_download_pauses_with_the_reason_and_retry_finishes_once_freed()
 {
    const MIB: u64 = 1024 * 1024;
    let dir = lab_dir();
    let Some(mut lab) = netns_lab(&dir, |spec| spec.binary_size = 8 * MIB as usize).await else {
        return;
    };
    let victim = "worker-03";
    // Room for the installed binary and half of the new one.
    let bin_dir = lab.host(victim).host.path("/usr/local/bin");
    let disk = SmallDisk::mount_over(&bin_dir, 12 * MIB).unwrap();
    let files_before = disk.files();
    // Its agent started before the mount, in a mount namespace of its own.
    tokio::task::block_in_place(|| {
        lab.host(victim).restart_agent()?;
        lab.wait_for_agents(Duration::from_secs(60))
    })
    .unwrap();

    start(&lab, TO, &["--max-unavailable", "1"]);
    let status = wait_for_rollout(
        &lab,
        "the rollout to pause",
        Duration::from_secs(300),
        |s| phase(s) == "paused",
    );
    assert_eq!(step_of(&status, victim), "failed", "{status:#}");
    let failure = nodes(&status)
        .iter()
        .find(|n| n["name"] == victim)
        .and_then(|n| n["failure"].as_str())
        .unwrap_or_default();
    assert!(failure.contains("No space left on device"), "{failure}");
    assert!(
        status["pauseReason"]
            .as_str()
            .unwrap_or_default()
            .contains(victim),
        "{status:#}"
    );
    // Nothing half-written: the old binary runs, no temporary file is left.
    let host = lab.hosts.iter().find(|h| h.name == victim).unwrap();
    assert_eq!(host.installed_version().as_deref(), Some(FROM));
    assert!(
        kubelet_versions(&lab)
            .iter()
            .any(|(node, version)| node == victim && version == FROM)
    );
    let stray: Vec<String> = disk
        .files()
        .into_iter()
        .filter(|f| !files_before.contains(f) && f != "k3s.previous")
        .collect();
    assert!(stray.is_empty(), "left on the full disk: {stray:?}");
    // Its cordon is k3sfleet's, and known: only this node, waiting for a decision.
    assert_eq!(lab.cordoned_nodes(), [victim]);

    // The operator frees space and retries the node.
    disk.resize(64 * MIB).unwrap();
    cli(&lab, &["upgrade", "retry", victim]);
    assert_completes_clean(&lab, TO);
    lab.shutdown().await;
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_answering_slowly_and_with_500s_for_a_while_delays_the_rollout_and_breaks_nothing()
 {
    let dir = lab_dir();
    let Some(lab) = netns_lab(&dir, |spec| {
        // Kubernetes' 40 s node-monitor grace in wall time: the outage below
        // is shorter, so nodes stay Ready as they would.
        let scale = spec.scenario.cluster.time_scale;
        spec.scenario.timings.node_monitor_grace = Some(40.0 * scale);
    })
    .await
    else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1"]);
    // Once the servers are done (a state a poll cannot miss), the workers'
    // cordons and drains run into the outage.
    wait_for_rollout(
        &lab,
        "the servers upgraded",
        Duration::from_secs(300),
        |s| {
            nodes(s)
                .iter()
                .filter(|n| n["role"] == "NODE_ROLE_SERVER")
                .all(|n| n["step"] == "done")
        },
    );
    lab.kubesim().inject_faults(&Faults {
        latency_ms: 300,
        errors_for_seconds: 15.0,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(15)).await;
    let status = lab.rollout().unwrap();
    assert_eq!(phase(&status), "running", "{status:#}");
    // Slow for the rest of the rollout.
    lab.kubesim().inject_faults(&Faults {
        latency_ms: 300,
        ..Default::default()
    });
    assert_completes_clean(&lab, TO);
    lab.kubesim().clear_faults();
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_the_binary_swap_finds_its_binary_intact_and_finishes_the_upgrade() {
    let dir = lab_dir();
    let Some(mut lab) = netns_lab(&dir, |_| {}).await else {
        return;
    };
    // The new K3s takes 3 s to start: the window between the swap (rename)
    // and the verified restart, where the kill lands.
    let new_binary = k3s_binary(TO, K3sBehaviour::SlowToStart(3), lab.spec.binary_size);
    write_release(&lab.artifacts, TO, &new_binary).unwrap();
    start(&lab, TO, &[]);

    let victim = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(host) = lab
                .hosts
                .iter()
                .find(|h| h.installed_version().as_deref() == Some(TO))
            {
                return host.name.clone();
            }
            assert!(Instant::now() < deadline, "no binary was swapped");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let host = lab.host(&victim);
    host.agent.kill();
    assert_eq!(
        host.host.k3s().as_deref(),
        Some(new_binary.as_slice()),
        "{victim}'s binary right after the kill: whole, and the new one"
    );
    tokio::task::block_in_place(|| host.restart_agent()).unwrap();

    let status = assert_completes_clean(&lab, TO);
    assert_eq!(step_of(&status, &victim), "done");
    // The restarted agent knew the install had been cut short.
    let log = lab.host(&victim).agent.log_text();
    assert!(log.contains("was interrupted"), "{log}");
    lab.shutdown().await;
}
