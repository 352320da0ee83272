//! Rolling upgrades on a bad day, on the real tier: the small fleet (3
//! servers with a real three-member etcd cluster, 4 workers) with every host
//! in a network namespace of its own. A cut cable loses a host for real: its
//! etcd member drops out of the cluster, its kubelet's lease stops being
//! renewed and the real node-lifecycle controller marks the node NotReady;
//! the API servers are reached through the load balancer, which drops a dead
//! one. Every test ends with the auditor's verdict.
//!
//! Needs root and scripts/build-testbed.sh; recorded as skipped otherwise.

use std::time::{Duration, Instant};

use k3sfleet_sim::lab::real::COORDINATOR_USER;
use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_standin::{K3sBehaviour, k3s_binary, write_release};
use k3sfleet_tests::real::{assert_audit_clean, healthy_members, real_lab, real_lab_dir, wait};
use k3sfleet_tests::rollout::{
    assert_completes_clean, cli, nodes, phase, start, step_of, wait_for_rollout,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const TO: &str = "v1.31.5+k3s1";
/// Longer than either side waits on a silent session (20 s: the agent's
/// HTTP/2 keepalive timeout, the coordinator's fleet::silence_limit).
const LONGER_THAN_LIVENESS: Duration = Duration::from_secs(25);

/// The first host of `role` (servers or not) whose agent has begun
/// installing, from the agents' logs, read every 10 ms.
fn installing(lab: &Lab, servers: bool) -> String {
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(host) = lab
                .hosts
                .iter()
                .filter(|h| h.server == servers)
                .find(|h| h.agent.log_text().contains(r#"step="checksums""#))
            {
                return host.name.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no host began installing; the rollout: {:#}\nlogs in {}",
                lab.rollout().unwrap_or_default(),
                lab.dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

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

/// Nodes in a step between pending and done.
fn busy(status: &Value) -> Vec<String> {
    nodes(status)
        .iter()
        .filter(|n| n["step"] != "pending" && n["step"] != "done")
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_during_the_rollout_takes_its_etcd_member_and_no_other_server_goes_down_until_it_is_back()
 {
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::small().unwrap()).await else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1"]);
    // The first server begins its install; another one drops off the network.
    let upgrading = installing(&lab, true);
    let victim = ["server-3", "server-2"]
        .into_iter()
        .find(|s| *s != upgrading)
        .unwrap()
        .to_string();
    let third = ["server-1", "server-2", "server-3"]
        .into_iter()
        .find(|s| *s != upgrading && *s != victim)
        .unwrap()
        .to_string();
    lab.cut(&victim).unwrap();
    let cut_at = Instant::now();
    eprintln!("{upgrading} is installing; cut {victim}");

    // Its etcd member is really gone: the others see two of three.
    wait(
        "the cut member to drop out of etcd",
        Duration::from_secs(60),
        || healthy_members(&lab, &third).len() == 2,
    );
    // The upgrading server may finish (its etcd still has a quorum with the
    // third), but no other server is taken down while the victim is away.
    let mut last = Value::Null;
    let mut api_down = 0;
    tokio::task::block_in_place(|| {
        while cut_at.elapsed() < Duration::from_secs(45) {
            let status = lab.rollout().unwrap();
            assert_eq!(phase(&status), "running", "{status:#}");
            // Checking whether it may go is fine; going is not.
            for server in [&victim, &third] {
                let step = step_of(&status, server);
                assert!(
                    step == "pending" || step == "pre_check",
                    "{server} went to {step} while {victim} was cut off: {status:#}"
                );
            }
            // While the upgrading server restarts, its etcd member and the
            // third are two of three only once it is back: the cluster has no
            // API for those seconds (etcd without quorum), as it would not.
            match lab.try_cordoned_nodes() {
                Ok(cordoned) => assert!(
                    !cordoned.contains(&third) && !cordoned.contains(&victim),
                    "cordoned while {victim} was cut off: {cordoned:?}"
                ),
                Err(_) => api_down += 1,
            }
            last = status;
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    eprintln!(
        "the API was unreachable in {api_down} of the polls (every 0.5 s) while {upgrading} restarted"
    );
    eprintln!(
        "after 45 s without {victim}: {upgrading} is {}, {third} waits: {}",
        step_of(&last, &upgrading),
        nodes(&last)
            .iter()
            .find(|n| n["name"] == third.as_str())
            .map(|n| n["blocker"].to_string())
            .unwrap_or_default()
    );
    // The cluster sees the victim go once a controller-manager finds its
    // lease older than the lab's node-monitor grace (NODE_MONITOR_GRACE),
    // which has been seen to come after the 45 s above. On a loaded machine
    // the upgrading server may still be restarting, and with it and the
    // victim both away etcd has no quorum and the cluster no API: that is
    // "not yet". The third server's K3s was never touched.
    wait(
        "the cluster to mark the cut server NotReady",
        Duration::from_secs(90),
        || lab.try_node_ready(&victim).is_ok_and(|ready| !ready),
    );
    let third_host = lab.hosts.iter().find(|h| h.name == third).unwrap();
    assert_eq!(
        third_host.installed_version().as_deref(),
        Some(lab.spec.from_version.as_str())
    );

    lab.heal(&victim).unwrap();
    assert_completes_clean(&lab, TO);
    assert_eq!(healthy_members(&lab, "server-1").len(), 3);
    assert_audit_clean(&lab);
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_mid_install_is_waited_for_and_finishes_once_its_cable_is_back() {
    let dir = real_lab_dir();
    let mut spec = LabSpec::small().unwrap();
    spec.binary_size = 32 * 1024 * 1024;
    let Some(lab) = real_lab(&dir, spec).await else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1"]);
    let victim = installing(&lab, false);
    lab.cut(&victim).unwrap();
    let cut_at = Instant::now();

    // The coordinator loses the agent, the real node-lifecycle controller
    // loses the kubelet (no lease renewals).
    wait(
        "the coordinator to lose the cut-off agent",
        Duration::from_secs(60),
        || connectivity(&lab, &victim) != "CONNECTIVITY_CONNECTED",
    );
    wait(
        "the cluster to mark the node NotReady",
        Duration::from_secs(60),
        || !lab.node_ready(&victim),
    );
    eprintln!(
        "{victim} NotReady in the cluster {:.1}s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(LONGER_THAN_LIVENESS.saturating_sub(cut_at.elapsed())).await;
    // The rollout holds the node and its slot: no other worker was started.
    let status = lab.rollout().unwrap();
    assert_eq!(phase(&status), "running", "{status:#}");
    let workers_busy: Vec<String> = busy(&status)
        .into_iter()
        .filter(|n| n.starts_with("worker"))
        .collect();
    assert_eq!(workers_busy, std::slice::from_ref(&victim), "{status:#}");

    lab.heal(&victim).unwrap();
    let status = assert_completes_clean(&lab, TO);
    assert_eq!(step_of(&status, &victim), "done");
    assert_audit_clean(&lab);
    lab.shutdown().await;
}

/// The server whose API server answered the coordinator last, from the
/// audit logs: the one the load balancer sends it to.
fn coordinators_api_server(lab: &Lab) -> String {
    let real = lab.real();
    let mut latest: Option<(String, String)> = None;
    for (name, layout) in real.servers() {
        let records = k3sfleet_sim::audit::log::read_all(&[layout.audit_log()]);
        if let Some(last) = records
            .iter()
            .filter(|r| r.user == COORDINATOR_USER)
            .map(|r| r.time.clone())
            .max()
            && latest.as_ref().is_none_or(|(_, t)| last > *t)
        {
            latest = Some((name.clone(), last));
        }
    }
    latest
        .expect("the coordinator has talked to an API server")
        .0
}

/// Whether a server other than `gone` logged a request of the coordinator's
/// answered after `after` (RFC 3339).
fn coordinator_served_elsewhere(lab: &Lab, gone: &str, after: &str) -> bool {
    lab.real()
        .servers()
        .iter()
        .filter(|(name, _)| name != gone)
        .any(|(_, layout)| {
            k3sfleet_sim::audit::log::read_all(&[layout.audit_log()])
                .iter()
                .any(|r| r.user == COORDINATOR_USER && r.time.as_str() > after)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_the_coordinator_talks_to_going_down_with_its_host_does_not_blind_the_rollout()
 {
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::small().unwrap()).await else {
        return;
    };
    start(&lab, TO, &["--max-unavailable", "1", "--settle", "3s"]);
    // Once the servers are done, the workers' cordons and drains need the API.
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
    let server = tokio::task::block_in_place(|| coordinators_api_server(&lab));
    let cut_time = k8s_openapi::jiff::Timestamp::now().to_string();
    lab.cut(&server).unwrap();
    let cut_at = Instant::now();
    eprintln!("the coordinator talked to {server}'s API server: cut {server}");
    let done_at_cut = nodes(&lab.rollout().unwrap())
        .iter()
        .filter(|n| n["step"] == "done")
        .count();

    // The load balancer drops the dead server and the coordinator's
    // requests land on another one.
    wait(
        "the coordinator's requests to reach another API server",
        Duration::from_secs(30),
        || coordinator_served_elsewhere(&lab, &server, &cut_time),
    );
    eprintln!(
        "the coordinator was answered by another API server {:.1}s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = lab.rollout().unwrap();
    assert_eq!(phase(&status), "running", "{status:#}");
    let done_now = nodes(&status)
        .iter()
        .filter(|n| n["step"] == "done")
        .count();
    eprintln!(
        "while {server} was down: {} more nodes done ({done_at_cut} -> {done_now})",
        done_now - done_at_cut
    );
    // Not blind: the workers' cordons, drains and uncordons went on.
    assert!(
        done_now > done_at_cut,
        "no node finished while {server} was down: {status:#}"
    );

    lab.heal(&server).unwrap();
    assert_completes_clean(&lab, TO);
    assert_eq!(healthy_members(&lab, "server-1").len(), 3);
    assert_audit_clean(&lab);
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
    let dir = real_lab_dir();
    let Some(mut lab) = real_lab(&dir, LabSpec::small().unwrap()).await else {
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
    assert!(kills.len() >= releases.len(), "{kills:?}");
    assert_audit_clean(&lab);
    lab.shutdown().await;
}
