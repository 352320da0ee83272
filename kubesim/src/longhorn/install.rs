//! A scenario's Longhorn at the start: its settings, volumes, and each volume's replicas,
//! healthy. Instance managers, their budgets and Longhorn's Node resources come from the
//! controller's first run.

use serde_json::json;

use super::{Replica, Setting, Volume};
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::scenario::{LonghornSection, Scenario};
use crate::time::Now;

pub fn install(
    cluster: &mut Cluster,
    scenario: &Scenario,
    longhorn: &LonghornSection,
    now: &Now,
) -> Result<(), ApiError> {
    for (name, value) in [
        ("node-drain-policy", longhorn.node_drain_policy.clone()),
        (
            "replica-replenishment-wait-interval",
            // Longhorn keeps setting values as strings.
            format!(
                "{}",
                longhorn.replica_replenishment_wait_interval.round() as u64
            ),
        ),
    ] {
        cluster.create(Setting::named(name, json!({ "value": value })), now)?;
    }
    let nodes: Vec<&str> = scenario
        .nodes
        .iter()
        .filter(|n| {
            longhorn
                .node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
        })
        .map(|n| n.name.as_str())
        .collect();
    for (index, spec) in longhorn.volumes.iter().enumerate() {
        cluster.create(
            Volume::named(
                &spec.name,
                json!({
                    "spec": {"numberOfReplicas": spec.replicas,
                             "consumer": spec.consumer.clone().unwrap_or_default()},
                    "status": {"state": "detached", "currentNodeID": "", "robustness": "unknown"}
                }),
            ),
            now,
        )?;
        // Spread: volume i starts at node i, as Longhorn's scheduler spreads replicas over
        // the nodes with the fewest.
        let placed: Vec<String> = if spec.nodes.is_empty() {
            (0..spec.replicas as usize)
                .map(|k| nodes[(index + k) % nodes.len()].to_string())
                .collect()
        } else {
            spec.nodes.clone()
        };
        for (k, node) in placed.iter().enumerate() {
            cluster.create(
                Replica::named(
                    &format!("{}-r-{k}", spec.name),
                    json!({
                        "spec": {"volumeName": spec.name, "nodeID": node,
                                 "healthyAt": now.wall.to_string(), "failedAt": "",
                                 "desireState": "running"},
                        "status": {"currentState": "running"}
                    }),
                ),
                now,
            )?;
        }
    }
    Ok(())
}
