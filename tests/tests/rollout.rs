//! Rolling upgrades end to end: the simulated cluster, the real coordinator
//! and one real agent per stand-in host (sim's Lab), driven by the CLI.
//!
//! Every test ends by asking the simulated API server, not the coordinator,
//! whether a budget was broken or a node left cordoned.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_standin::{K3sBehaviour, k3s_binary, write_release};
use k3sfleet_tests::rollout::{
    assert_cluster_safe, assert_completes_clean, cli, kubelet_versions, lab_dir, nodes, phase,
    small_lab, start, step_of, wait_for_rollout,
};
use serde_json::Value;

const FROM: &str = "v1.31.4+k3s1";
const TO: &str = "v1.31.5+k3s1";
/// A release whose binary exits at once: K3s never comes up.
const BROKEN: &str = "v1.31.6+k3s1";

fn millis(node: &Value, field: &str) -> i64 {
    node[field]
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| node[field].as_i64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fleet_upgrades_servers_first_one_at_a_time_without_breaking_a_budget() {
    let dir = lab_dir();
    let lab = small_lab(&dir, LabSpec::demo().unwrap()).await;
    start(
        &lab,
        TO,
        &[
            "--max-unavailable",
            "25%",
            "--delete-emptydir-data",
            "--force",
        ],
    );
    let status = assert_completes_clean(&lab, TO);
    assert_eq!(nodes(&status).len(), 18);
    assert!(nodes(&status).iter().all(|n| n["step"] == "done"));

    // Servers one at a time, all before the first worker starts.
    let (servers, workers): (Vec<&Value>, Vec<&Value>) = nodes(&status)
        .iter()
        .partition(|n| n["role"] == "NODE_ROLE_SERVER");
    let mut spans: Vec<(i64, i64)> = servers
        .iter()
        .map(|n| (millis(n, "startedUnixMs"), millis(n, "finishedUnixMs")))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "servers overlapped: {spans:?}");
    }
    let first_worker = workers
        .iter()
        .map(|n| millis(n, "startedUnixMs"))
        .min()
        .unwrap();
    assert!(spans.last().unwrap().1 <= first_worker);
    // Workers went in batches: fewer waves than nodes.
    assert!(
        status["wavesStarted"].as_u64().unwrap() < 18,
        "waves: {}",
        status["wavesStarted"]
    );
    // Every server took an etcd snapshot first.
    assert!(servers.iter().all(|n| n["snapshot"].as_str().is_some()));

    // The coordinator's /metrics agree.
    let metrics = tokio::task::block_in_place(|| lab.coordinator_metrics()).unwrap();
    for line in [
        "k3sfleet_agents_connected 18",
        "k3sfleet_rollout_phase{phase=\"completed\",rollout=\"1\"} 1",
        "k3sfleet_rollout_nodes{rollout=\"1\",step=\"done\"} 18",
        "k3sfleet_rollout_step_duration_seconds_count{step=\"drain\"} 18",
        "k3sfleet_drain_wait_seconds_total{reason=\"pod termination\"}",
        "k3sfleet_node_certificate_expiry_timestamp_seconds{node=\"worker-15\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains("k3sfleet_node_cordoned_by_k3sfleet_seconds{"),
        "{metrics}"
    );

    // The audit log tells the story.
    let audit = cli(&lab, &["audit", "--node", "server-2", "--limit", "200"]);
    for step in [
        "pre_check",
        "snapshot",
        "cordon",
        "drain",
        "install",
        "wait_ready",
        "settle",
        "uncordon",
    ] {
        assert!(
            audit.contains(&format!("rollout.{step} ")),
            "{step} missing:\n{audit}"
        );
    }
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_binary_pauses_the_rollout_rolls_the_node_back_and_retry_finishes_after_a_fix() {
    let dir = lab_dir();
    let mut spec = LabSpec::small().unwrap();
    spec.failing_versions = vec![BROKEN.into()];
    let lab = small_lab(&dir, spec).await;
    start(&lab, BROKEN, &["--health-timeout", "5s"]);

    let status = wait_for_rollout(
        &lab,
        "the rollout to pause",
        Duration::from_secs(180),
        |s| phase(s) == "paused",
    );
    let failed: Vec<&Value> = nodes(&status)
        .iter()
        .filter(|n| n["step"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{status:#}");
    let failed_name = failed[0]["name"].as_str().unwrap().to_string();
    assert_eq!(failed_name, "server-1", "servers go first");
    let reason = failed[0]["failure"].as_str().unwrap();
    assert!(reason.contains("rolled back"), "{reason}");
    assert!(
        status["pauseReason"].as_str().unwrap().contains("server-1"),
        "{status:#}"
    );
    // Nothing else was touched.
    assert!(
        nodes(&status)
            .iter()
            .filter(|n| n["name"] != "server-1")
            .all(|n| n["step"] == "pending"),
        "{status:#}"
    );
    // `watch` on a paused rollout says why and what the operator can do, and exits 2.
    let watched =
        tokio::task::block_in_place(|| lab.cli().unwrap().args(["upgrade", "watch"]).output())
            .unwrap();
    let text = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(2), "{text}");
    assert!(
        text.contains("Decide: k3sfleet upgrade resume | retry server-1 | skip server-1 | abort"),
        "{text}"
    );

    // Rolled back: the old binary is in place and its kubelet is back.
    let server_1 = lab.hosts.iter().find(|h| h.name == "server-1").unwrap();
    assert_eq!(server_1.installed_version().as_deref(), Some(FROM));
    let ready_again = || {
        kubelet_versions(&lab)
            .iter()
            .any(|(node, version)| node == "server-1" && version == FROM)
    };
    tokio::task::block_in_place(|| {
        k3sfleet_tests::wait_until(
            "server-1's kubelet back on the old version",
            Duration::from_secs(60),
            ready_again,
        )
    });
    assert_eq!(lab.kubesim().stats().pdb_violations, 0);

    // The operator fixes the release and retries the node.
    write_release(
        &lab.artifacts,
        BROKEN,
        &k3s_binary(BROKEN, K3sBehaviour::Healthy, lab.spec.binary_size),
    )
    .unwrap();
    cli(&lab, &["upgrade", "retry", "server-1"]);
    assert_completes_clean(&lab, BROKEN);
    lab.shutdown().await;
}

/// Crash points, each "a node at this step" (servers only for snapshot).
const CRASH_AT: [&str; 5] = ["snapshot", "drain", "install", "wait_ready", "settle"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_killed_at_several_steps_resumes_and_finishes_cleanly() {
    let dir = lab_dir();
    let mut spec = LabSpec::small().unwrap();
    // Big enough that an install is still streaming when the crash lands.
    spec.binary_size = 24 * 1024 * 1024;
    let mut lab = small_lab(&dir, spec).await;
    start(&lab, TO, &["--max-unavailable", "2", "--settle", "3s"]);

    let mut crashed_at = Vec::new();
    let mut pending: Vec<&str> = CRASH_AT.to_vec();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() && Instant::now() < deadline {
        let status = tokio::task::block_in_place(|| lab.rollout()).unwrap_or_default();
        if phase(&status) == "completed" {
            break;
        }
        let hit = nodes(&status).iter().find_map(|n| {
            let step = n["step"].as_str()?;
            pending
                .iter()
                .position(|p| *p == step)
                .map(|i| (i, n["name"].as_str().unwrap_or_default().to_string()))
        });
        if let Some((index, node)) = hit {
            let step = pending.remove(index);
            lab.crash_coordinator().unwrap();
            crashed_at.push(format!("{node}@{step}"));
            // Let the restarted coordinator answer before the next crash.
            wait_for_rollout(
                &lab,
                "the coordinator back",
                Duration::from_secs(60),
                |_| true,
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        crashed_at.len() >= 3,
        "crashed only at {crashed_at:?}; the others passed too fast to catch"
    );

    let status = assert_completes_clean(&lab, TO);
    assert!(
        nodes(&status).iter().all(|n| n["step"] == "done"),
        "{status:#}"
    );
    eprintln!("crashed the coordinator at {crashed_at:?}");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_install_comes_back_and_the_upgrade_finishes() {
    let dir = lab_dir();
    let mut spec = LabSpec::small().unwrap();
    // Slow enough to download and verify that the kill lands mid-install.
    spec.binary_size = 48 * 1024 * 1024;
    let mut lab = small_lab(&dir, spec).await;
    start(&lab, TO, &["--max-unavailable", "1"]);

    let status = wait_for_rollout(&lab, "a worker installing", Duration::from_secs(300), |s| {
        nodes(s)
            .iter()
            .any(|n| n["step"] == "install" && n["role"] != "NODE_ROLE_SERVER")
    });
    let victim = nodes(&status)
        .iter()
        .find(|n| n["step"] == "install" && n["role"] != "NODE_ROLE_SERVER")
        .and_then(|n| n["name"].as_str())
        .unwrap()
        .to_string();
    let host = lab.host(&victim);
    host.agent.kill();
    // K3s on the host still runs whichever complete binary is in place.
    let on_disk = host.installed_version();
    assert!(
        on_disk.as_deref() == Some(FROM) || on_disk.as_deref() == Some(TO),
        "{victim}'s binary after the kill: {on_disk:?}"
    );
    host.restart_agent().unwrap();

    let status = assert_completes_clean(&lab, TO);
    assert_eq!(step_of(&status, &victim), "done");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_rollout_lifts_cordons_and_leaves_finished_nodes_upgraded() {
    let dir = lab_dir();
    let lab = small_lab(&dir, LabSpec::small().unwrap()).await;
    start(&lab, TO, &["--max-unavailable", "1", "--settle", "3s"]);

    wait_for_rollout(&lab, "a worker under way", Duration::from_secs(300), |s| {
        nodes(s).iter().any(|n| {
            n["role"] != "NODE_ROLE_SERVER" && !matches!(n["step"].as_str(), Some("pending"))
        })
    });
    cli(&lab, &["upgrade", "abort"]);
    let status = wait_for_rollout(
        &lab,
        "the rollout to abort",
        Duration::from_secs(300),
        |s| phase(s) == "aborted",
    );
    assert_cluster_safe(&lab);

    let versions = kubelet_versions(&lab);
    let mut finished = 0;
    for node in nodes(&status) {
        let name = node["name"].as_str().unwrap();
        let host = lab.hosts.iter().find(|h| h.name == name).unwrap();
        let on_disk = host.installed_version();
        match node["step"].as_str().unwrap() {
            "done" => {
                finished += 1;
                assert_eq!(on_disk.as_deref(), Some(TO), "{name}");
            }
            // Untouched, or caught by the abort part way: either way whole,
            // on one of the two versions, never half-written.
            "pending" | "aborted" => assert!(
                on_disk.as_deref() == Some(FROM) || on_disk.as_deref() == Some(TO),
                "{name}: {on_disk:?}"
            ),
            other => panic!("{name} ended at {other}: {status:#}"),
        }
        if node["step"] == "done" {
            assert!(versions.iter().any(|(n, v)| n == name && v == TO), "{name}");
        }
    }
    assert!(
        finished >= 3,
        "the servers finished before the abort: {status:#}"
    );
    assert!(finished < 7, "the abort came before the end: {status:#}");
    // Nothing starts after an abort.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = tokio::task::block_in_place(|| lab.rollout()).unwrap();
    assert_eq!(nodes(&later), nodes(&status));
    lab.shutdown().await;
}

/// Runs `upgrade plan`; returns (success, stdout).
fn plan(lab: &Lab, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let mut all = vec!["upgrade", "plan"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| lab.run_cli(&all))?;
    if !ok && stdout.is_empty() {
        bail!("plan failed without a plan: {stderr}");
    }
    Ok((ok, stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_rule_it_refuses_and_start_refuses_the_same() -> anyhow::Result<()> {
    let dir = lab_dir();
    let lab = small_lab(&dir, LabSpec::small().unwrap()).await;

    let (ok, out) = plan(&lab, &["--to", "v1.33.0+k3s1"])?;
    assert!(!ok);
    assert!(out.contains("rule no-minor-skip"), "{out}");

    let (ok, out) = plan(&lab, &["--to", "v1.31.3+k3s1"])?;
    assert!(!ok);
    assert!(out.contains("rule no-downgrade"), "{out}");
    let (_, out) = plan(&lab, &["--to", "v1.31.3+k3s1", "--allow-downgrade"])?;
    assert!(!out.contains("rule no-downgrade"), "{out}");

    let (ok, out) = plan(&lab, &["--to", TO, "--nodes", "worker-*"])?;
    assert!(!ok);
    assert!(out.contains("rule servers-first"), "{out}");

    let (ok, out) = plan(&lab, &["--to", TO, "--nodes", "server-1"])?;
    assert!(!ok);
    assert!(out.contains("rule servers-converge"), "{out}");

    // A plan that breaks no rule passes, and names the waves it saves.
    let (ok, out) = plan(&lab, &["--to", TO, "--max-unavailable", "2"])?;
    assert!(ok, "{out}");
    assert!(out.contains("one at a time would take 7"), "{out}");

    // Start refuses what plan refuses, and starts nothing.
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| lab.run_cli(&["upgrade", "start", "--to", "v1.33.0+k3s1"]))?;
    assert!(!ok);
    assert!(stderr.contains("no-minor-skip"), "{stderr}");
    let (ok, _, stderr) =
        tokio::task::block_in_place(|| lab.run_cli(&["upgrade", "status"])).context("status")?;
    assert!(!ok, "no rollout should exist");
    assert!(stderr.contains("no rollout"), "{stderr}");
    assert_cluster_safe(&lab);
    lab.shutdown().await;
    Ok(())
}
