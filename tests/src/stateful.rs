//! The stateful fleet's rolling upgrade (sim/scenarios/stateful.toml), asserted the same way
//! on both tiers: Longhorn volumes of 3 replicas and of 1, a three-instance and a
//! single-instance database, and a workload whose replicas all run on one node. The simulated
//! Longhorn (kubesim's, or the same rules running against the real API servers) keeps the
//! instance managers' budgets and the replicas' states, and judges: no volume may ever be left
//! without a healthy replica.

use std::time::{Duration, Instant};

use k3sfleet_sim::lab::Lab;

use crate::rollout::{assert_cluster_safe, cli, nodes, phase, start, step_of, wait_for_rollout};

pub const TO: &str = "v1.31.5+k3s1";

fn run_cli(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    tokio::task::block_in_place(|| lab.run_cli(args)).expect("the CLI runs")
}

/// The guardrails report, the plan's permanent blockers, a refused start with nothing
/// cordoned, then the rollout with the blocked node skipped: completed, no budget broken,
/// every volume kept at least one healthy replica, and pvc-pg-0's replicas rebuilt as each
/// of its nodes came back. Returns how long the rollout took.
pub fn permanent_blockers_are_named_and_no_volume_loses_its_last_replica(
    lab: &Lab,
    rollout_timeout: Duration,
) -> Duration {
    // The guardrails report: the report generator runs on one node only. Findings exit 1.
    let (ok, report, _) = run_cli(lab, &["check", "workloads", "-o", "json"]);
    assert!(!ok, "no findings: {report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let one_node = findings
        .iter()
        .find(|f| f["workload"] == "Deployment/reports" && f["check"] == "one-node")
        .unwrap_or_else(|| panic!("nothing about shop/reports: {report:#}"));
    assert!(
        one_node["message"].as_str().unwrap().contains("worker-03"),
        "{one_node:#}"
    );
    // The web tier's pods are spread over the workers.
    assert!(
        !findings
            .iter()
            .any(|f| f["workload"] == "Deployment/web" && f["check"] == "one-node"),
        "{report:#}"
    );

    // The plan tells what will never pass by waiting on worker-04: the single-instance
    // database's budget, and the volume whose only replica is there.
    let plan = cli(lab, &["upgrade", "plan", "--to", TO]);
    let never = plan
        .split("Will not pass by waiting")
        .nth(1)
        .unwrap_or_else(|| panic!("no permanent blockers in the plan:\n{plan}"));
    assert!(never.contains("worker-04"), "{plan}");
    assert!(never.contains("solo-db"), "{plan}");
    assert!(never.contains("pvc-solo-db-0"), "{plan}");
    assert!(plan.contains("block-if-contains-last-replica"), "{plan}");

    // start refuses, and nothing was cordoned.
    let (ok, stdout, stderr) = run_cli(lab, &["upgrade", "start", "--to", TO, "--settle", "1s"]);
    assert!(!ok, "start went ahead: {stdout}");
    assert!(stderr.contains("worker-04"), "{stderr}");
    assert!(
        tokio::task::block_in_place(|| lab.cordoned_nodes()).is_empty(),
        "a node was cordoned before the refusal"
    );

    // Skipping that node, the rest rolls: Longhorn's rebuilds waited for between nodes.
    let started = Instant::now();
    start(lab, TO, &["--permanent-blockers", "skip"]);
    let status = wait_for_rollout(lab, "the rollout to complete", rollout_timeout, |s| {
        phase(s) == "completed"
    });
    let took = started.elapsed();
    assert_eq!(step_of(&status, "worker-04"), "skipped", "{status:#}");
    let done = nodes(&status)
        .iter()
        .filter(|n| n["step"] == "done")
        .count();
    assert_eq!(done, 6, "{status:#}");
    assert_cluster_safe(lab);

    let longhorn = lab.longhorn_stats().expect("the scenario runs Longhorn");
    assert!(
        longhorn.violations.is_empty(),
        "volumes left without a healthy replica: {:?}",
        longhorn.violations
    );
    for volume in ["pvc-pg-0", "pvc-solo-db-0"] {
        let lowest = longhorn.lowest_healthy.get(volume).copied();
        assert!(lowest.is_some_and(|n| n >= 1), "{volume}: {lowest:?}");
    }
    // Each of the three workers holding pvc-pg-0's replicas went, and its replica was
    // rebuilt when it came back (the last one's after the rollout ended: it does not wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let longhorn = lab.longhorn_stats().expect("the scenario runs Longhorn");
        if longhorn.rebuilds >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{longhorn:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    took
}
