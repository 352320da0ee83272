//! Rolling upgrades of a fleet with stateful workloads on kubesim (the real tier's twin is
//! real_stateful.rs; the scenario and its assertions are in k3sfleet_tests::stateful).

use std::time::Duration;

use k3sfleet_sim::lab::LabSpec;
use k3sfleet_tests::rollout::{lab_dir, small_lab};
use k3sfleet_tests::stateful::permanent_blockers_are_named_and_no_volume_loses_its_last_replica;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_blockers_are_named_before_anything_moves_and_no_volume_loses_its_last_replica() {
    let dir = lab_dir();
    let lab = small_lab(&dir, LabSpec::stateful().unwrap()).await;
    let stats = lab.kubesim().stats();
    assert_eq!(stats.pdb_violations, 0, "{stats:?}");
    let took = permanent_blockers_are_named_and_no_volume_loses_its_last_replica(
        &lab,
        Duration::from_secs(400),
    );
    println!(
        "kubesim: the stateful fleet upgraded in {:.1}s",
        took.as_secs_f64()
    );
    lab.shutdown().await;
}
