//! Replica states, as longhorn-manager's volume controller (VC) moves them:
//! - a healthy replica whose instance manager is gone fails: its
//!   process went with the instance manager, the engine sees it in ERR mode and VC sets
//!   `spec.failedAt` and desireState stopped ("Replica %v is marked as failed");
//! - a failed replica whose node serves again within `replica-replenishment-wait-interval` is
//!   reused: rebuilt in place from a healthy one, which takes `rebuild_seconds`, after which
//!   VC sets `spec.healthyAt` and clears failedAt (VC replenishReplicas reuses
//!   `reusableFailedReplica` and calls setReplicaFailedAt(r, ""));
//! - past that wait, a new replica is scheduled on another node and rebuilt (VC
//!   replenishReplicas; the scheduler skips cordoned nodes by default,
//!   `disable-scheduling-on-cordoned-node` = true, and nodes that hold one already);
//! - replicas on a node whose `spec.evictionRequested` is set are replaced elsewhere, and
//!   removed once the volume is healthy without them (VC EvictReplicas);
//! - a failed replica left over once the volume is healthy again is removed (the simulator
//!   does at once what Longhorn's cleanup does after staleReplicaTimeout).
//!
//! Rebuilding needs a running engine, so a volume's replicas rebuild only while it is
//! attached (VC replenishes in ReconcileEngineReplicaState, which returns early when the
//! engine is not running), except for an eviction, for which Longhorn attaches the volume
//! itself.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    LonghornConfig, NAMESPACE, Replica, is_failed, is_healthy, is_longhorn_node, is_unschedulable,
    node_serves_replicas,
};
use crate::cluster::Cluster;
use crate::time::Now;

pub(super) fn sync(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let mut changed = fail_and_rebuild(cluster, config, now);
    changed |= replenish(cluster, config, now);
    changed
}

fn evicting_nodes(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .longhorn
        .nodes
        .iter()
        .filter(|n| n.pointer("/spec/evictionRequested") == Some(&Value::Bool(true)))
        .map(|n| n.name().to_string())
        .collect()
}

fn replicas_of<'a>(cluster: &'a Cluster, volume: &'a str) -> impl Iterator<Item = &'a Replica> {
    cluster
        .longhorn
        .replicas
        .iter()
        .map(|r| &**r)
        .filter(move |r| r.text("/spec/volumeName") == volume)
}

/// Whether a failed replica may still be reused (failed less than the replenishment wait ago).
fn reusable(cluster: &Cluster, config: &LonghornConfig, replica: &Replica, now: &Now) -> bool {
    let wait = cluster.config.scale.wall(config.replenishment_wait);
    cluster
        .longhorn
        .state
        .failed_since
        .get(replica.name())
        .is_none_or(|since| now.instant < *since + wait)
}

fn fail_and_rebuild(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let replicas: Vec<Replica> = cluster
        .longhorn
        .replicas
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let evicting = evicting_nodes(cluster);
    let rebuild = if cluster.sim.bootstrapping {
        Duration::ZERO
    } else {
        cluster.config.scale.wall(config.rebuild_seconds)
    };
    let mut changed = false;
    for mut replica in replicas {
        let name = replica.name().to_string();
        let node = replica.text("/spec/nodeID").to_string();
        let volume = replica.text("/spec/volumeName").to_string();
        let serves = node_serves_replicas(cluster, &node);
        if is_healthy(&replica) {
            // While the scenario is being built the instance managers are still starting.
            if !serves && !cluster.sim.bootstrapping {
                replica.set("spec", "failedAt", json!(now.wall.to_string()));
                replica.set("spec", "desireState", json!("stopped"));
                replica.set("status", "currentState", json!("stopped"));
                cluster
                    .longhorn
                    .state
                    .failed_since
                    .insert(name.clone(), now.instant);
                cluster.longhorn.state.rebuild_due.remove(&name);
                cluster.write(replica);
                changed = true;
            }
            continue;
        }
        let source = replicas_of(cluster, &volume).any(|r| {
            r.name() != name
                && is_healthy(r)
                && node_serves_replicas(cluster, r.text("/spec/nodeID"))
        });
        let engine_runs = cluster
            .longhorn
            .volumes
            .get(NAMESPACE, &volume)
            .is_some_and(|v| v.text("/status/state") == "attached")
            || replicas_of(cluster, &volume).any(|r| evicting.contains(r.text("/spec/nodeID")));
        let may_rebuild = serves
            && source
            && engine_runs
            && (!is_failed(&replica) || reusable(cluster, config, &replica, now));
        if !may_rebuild {
            // An interrupted rebuild starts over.
            cluster.longhorn.state.rebuild_due.remove(&name);
            continue;
        }
        let due = *cluster
            .longhorn
            .state
            .rebuild_due
            .entry(name.clone())
            .or_insert(now.instant + rebuild);
        if now.instant < due {
            cluster.sim.wake_at(due);
            continue;
        }
        cluster.longhorn.state.rebuild_due.remove(&name);
        cluster.longhorn.state.failed_since.remove(&name);
        replica.set("spec", "healthyAt", json!(now.wall.to_string()));
        replica.set("spec", "failedAt", json!(""));
        replica.set("spec", "desireState", json!("running"));
        replica.set("status", "currentState", json!("running"));
        cluster.write(replica);
        if !cluster.sim.bootstrapping {
            cluster.stats_mut().longhorn_rebuilds += 1;
        }
        changed = true;
    }
    changed
}

/// New replicas where a volume is short of usable ones; old ones removed once it is healthy.
fn replenish(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let evicting = evicting_nodes(cluster);
    let volumes: Vec<(String, u64)> = cluster
        .longhorn
        .volumes
        .iter()
        .map(|v| {
            (
                v.name().to_string(),
                v.pointer("/spec/numberOfReplicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            )
        })
        .collect();
    let mut changed = false;
    for (volume, wanted) in volumes {
        let mine: Vec<Replica> = replicas_of(cluster, &volume).cloned().collect();
        let stays = |r: &Replica| !evicting.contains(r.text("/spec/nodeID"));
        let usable = mine
            .iter()
            .filter(|r| stays(r) && (!is_failed(r) || reusable(cluster, config, r, now)))
            .count() as u64;
        let healthy_staying = mine.iter().filter(|r| stays(r) && is_healthy(r)).count() as u64;
        // VC: "if healthyCount == 0 ... going to faulted": nothing to rebuild from.
        let any_healthy = mine.iter().any(is_healthy);
        if usable < wanted && any_healthy {
            let taken: BTreeSet<String> = mine
                .iter()
                .map(|r| r.text("/spec/nodeID").to_string())
                .collect();
            let mut candidates: Vec<(usize, String)> = cluster
                .nodes
                .iter()
                .filter(|n| is_longhorn_node(config, n) && !is_unschedulable(n))
                .filter_map(|n| n.metadata.name.clone())
                .filter(|n| !taken.contains(n) && !evicting.contains(n))
                .filter(|n| node_serves_replicas(cluster, n))
                .filter(|n| {
                    cluster.longhorn.nodes.get(NAMESPACE, n).is_none_or(|ln| {
                        ln.pointer("/spec/allowScheduling") != Some(&Value::Bool(false))
                    })
                })
                .map(|n| {
                    let load = cluster
                        .longhorn
                        .replicas
                        .iter()
                        .filter(|r| r.text("/spec/nodeID") == n)
                        .count();
                    (load, n)
                })
                .collect();
            candidates.sort();
            for (_, node) in candidates.into_iter().take((wanted - usable) as usize) {
                let suffix = cluster.random_suffix(8);
                let replica = Replica::named(
                    &format!("{volume}-r-{suffix}"),
                    json!({
                        "spec": {"volumeName": volume, "nodeID": node, "healthyAt": "",
                                 "failedAt": "", "desireState": "running"},
                        "status": {"currentState": "running"}
                    }),
                );
                if let Err(error) = cluster.create(replica, now) {
                    tracing::warn!(%error, "creating a Longhorn replica");
                }
                changed = true;
            }
        }
        if healthy_staying >= wanted {
            for leftover in mine.iter().filter(|r| !stays(r) || is_failed(r)) {
                let name = leftover.name().to_string();
                cluster.remove::<Replica>(NAMESPACE, &name);
                cluster.longhorn.state.rebuild_due.remove(&name);
                cluster.longhorn.state.failed_since.remove(&name);
                changed = true;
            }
        }
    }
    changed
}
