//! The demo fleet's rolling upgrade on the real tier: 3 K3s servers running a
//! real three-member etcd cluster and the upstream control plane, 15 agents,
//! KWOK kubelets, the shop's Deployments, StatefulSets, DaemonSets, bare
//! pods and PodDisruptionBudgets applied as manifests, the simulated
//! Longhorn's volumes served by the real API servers; the real disruption
//! controller keeps budget status, the real ReplicaSet and StatefulSet
//! controllers replace evicted pods, the real scheduler places them. The
//! auditor, not the coordinator, says whether a budget was broken.
//!
//! Needs root and scripts/build-testbed.sh; recorded as skipped otherwise.

use std::time::Instant;

use k3sfleet_sim::lab::LabSpec;
use k3sfleet_sim::lab::real::COORDINATOR_USER;
use k3sfleet_standin::real::K3sLayout;
use k3sfleet_tests::real::{assert_audit_clean, healthy_members, real_lab, real_lab_dir};
use k3sfleet_tests::rollout::{assert_completes_clean, cli, nodes, start};
use serde_json::Value;

const TO: &str = "v1.31.5+k3s1";

fn millis(node: &Value, field: &str) -> i64 {
    node[field]
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| node[field].as_i64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fleet_upgrades_on_the_real_control_plane_servers_first_without_breaking_a_budget()
{
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::demo().unwrap()).await else {
        return;
    };
    let started = Instant::now();
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
    let took = started.elapsed();
    assert_eq!(nodes(&status).len(), 18);

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
    assert!(
        status["wavesStarted"].as_u64().unwrap() < 18,
        "waves: {}",
        status["wavesStarted"]
    );

    // Every server took a real etcd snapshot first, and etcdutl accepts it.
    for server in &servers {
        let name = server["snapshot"].as_str().expect("a snapshot name");
        let host = lab.hosts.iter().find(|h| h.name == server["name"]).unwrap();
        let file = K3sLayout::new(host.host.root()).snapshots().join(name);
        let check = std::process::Command::new(lab.real().testbed.bin.join("etcdutl"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // The etcd cluster came through whole.
    assert_eq!(healthy_members(&lab, "server-1").len(), 3);

    // The demo fleet's Longhorn (the simulated one, on the real API servers): no volume
    // ever went without a healthy replica, and the replicas the drains took were rebuilt.
    let longhorn = lab.longhorn_stats().expect("the demo fleet runs Longhorn");
    assert!(longhorn.violations.is_empty(), "{longhorn:?}");
    assert!(!longhorn.lowest_healthy.is_empty(), "{longhorn:?}");
    assert!(
        longhorn.lowest_healthy.values().all(|&n| n >= 1),
        "{longhorn:?}"
    );
    assert!(longhorn.rebuilds > 0, "{longhorn:?}");

    let verdict = assert_audit_clean(&lab);
    let audit = cli(&lab, &["audit", "--node", "server-2", "--limit", "200"]);
    for step in ["snapshot", "cordon", "drain", "install", "uncordon"] {
        assert!(
            audit.contains(&format!("rollout.{step} ")),
            "{step} missing:\n{audit}"
        );
    }
    println!(
        "real tier: the demo fleet (3 servers, 15 workers) upgraded in {:.1}s, {} waves; \
         evictions by the coordinator: {} admitted, {} refused with 429; Longhorn rebuilt {} \
         replicas, the fewest healthy replicas of a volume: {}",
        took.as_secs_f64(),
        status["wavesStarted"],
        verdict.evictions_by(COORDINATOR_USER, 201),
        verdict.evictions_by(COORDINATOR_USER, 429),
        longhorn.rebuilds,
        longhorn.lowest_healthy.values().min().unwrap_or(&0),
    );
    lab.shutdown().await;
}
