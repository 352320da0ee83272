//! The stateful fleet's rolling upgrade on the real tier: the same scenario and assertions as
//! rollout_stateful.rs (k3sfleet_tests::stateful), with the simulated Longhorn's resources
//! served by the real API servers through CustomResourceDefinitions, its instance managers
//! run by KWOK, their budgets kept by the real disruption controller and met through the
//! real Eviction API; the auditor says whether a budget was broken.
//!
//! Needs root and scripts/build-testbed.sh; recorded as skipped otherwise.

use std::time::Duration;

use k3sfleet_sim::lab::LabSpec;
use k3sfleet_tests::real::{assert_audit_clean, kubectl_ok, real_lab, real_lab_dir, wait};
use k3sfleet_tests::stateful::permanent_blockers_are_named_and_no_volume_loses_its_last_replica;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_control_plane_longhorn_budgets_hold_and_no_volume_loses_its_last_replica() {
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::stateful().unwrap()).await else {
        return;
    };
    // Longhorn's kinds are served as Longhorn serves them: kubectl finds them by short name,
    // and each worker's instance manager is guarded by a budget allowing no disruption.
    let volumes = kubectl_ok(&lab, &["get", "lhv", "-n", "longhorn-system", "-o", "name"]);
    assert!(volumes.contains("volume.longhorn.io/pvc-pg-0"), "{volumes}");
    let budgets = || {
        kubectl_ok(
            &lab,
            &[
                "get",
                "pdb",
                "-n",
                "longhorn-system",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.disruptionsAllowed} \
                 {.status.expectedPods}{\"\\n\"}{end}",
            ],
        )
    };
    // The disruption controller computes a new budget's status within moments.
    wait(
        "the instance managers' budgets' status",
        Duration::from_secs(30),
        || {
            let budgets = budgets();
            let lines: Vec<&str> = budgets.lines().collect();
            lines.len() == 4
                && lines
                    .iter()
                    .all(|l| l.starts_with("instance-manager-") && l.ends_with(" 0 1"))
        },
    );

    let took = permanent_blockers_are_named_and_no_volume_loses_its_last_replica(
        &lab,
        Duration::from_secs(600),
    );
    let verdict = assert_audit_clean(&lab);
    println!(
        "real tier: the stateful fleet (3 servers, 4 workers, 2 Longhorn volumes) upgraded in \
         {:.1}s; the auditor: {verdict}; Longhorn: {:?}",
        took.as_secs_f64(),
        lab.longhorn_stats()
    );
    lab.shutdown().await;
}
