//! The instance managers' PodDisruptionBudgets, as IM syncInstanceManagerPDB keeps them:
//! - only for an instance manager that is running ("if im.Status.CurrentState !=
//!   InstanceManagerStateRunning { return nil }");
//! - on a schedulable node, always ("Make sure that there is a PodDisruptionBudget to protect
//!   this instance manager in normal case"; the cluster-autoscaler setting is off by default);
//! - on a cordoned node, removed once [`can_delete`] (canDeleteInstanceManagerPDB) allows it.
//!
//! The budget selects the instance-manager pod by its labels with minAvailable 1
//! (generateInstanceManagerPDBManifest), so it allows no eviction while it exists.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    LonghornConfig, NAMESPACE, Replica, instance_manager_labels, instance_manager_name,
    instance_manager_running, is_healthy, is_longhorn_node, is_unschedulable,
};
use crate::cluster::Cluster;
use crate::time::Now;

pub(super) fn sync(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let nodes: Vec<(String, bool)> = cluster
        .nodes
        .iter()
        .filter(|n| is_longhorn_node(config, n))
        .filter_map(|n| Some((n.metadata.name.clone()?, is_unschedulable(n))))
        .collect();
    let mut changed = false;
    for (node, unschedulable) in nodes {
        if !instance_manager_running(cluster, &node) {
            continue;
        }
        let name = instance_manager_name(&node);
        let exists = cluster.pdbs.get(NAMESPACE, &name).is_some();
        if unschedulable {
            if exists && can_delete(cluster, &node).is_ok() {
                cluster.remove::<PodDisruptionBudget>(NAMESPACE, &name);
                changed = true;
            }
        } else if !exists {
            let pdb = PodDisruptionBudget {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(PodDisruptionBudgetSpec {
                    selector: Some(LabelSelector {
                        match_labels: Some(instance_manager_labels(&node)),
                        match_expressions: None,
                    }),
                    min_available: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
                status: None,
            };
            match cluster.create(pdb, now) {
                Ok(_) => changed = true,
                Err(error) => tracing::warn!(%error, "creating an instance-manager budget"),
            }
        }
    }
    changed
}

/// Whether Longhorn lets `node`'s instance-manager budget go; the refusal says why, in
/// Longhorn's words. A port of IM canDeleteInstanceManagerPDB for an all-in-one instance
/// manager.
pub fn can_delete(cluster: &Cluster, node: &str) -> Result<(), String> {
    // "Must wait for all volumes detached from the current node first."
    let attached: Vec<&str> = cluster
        .longhorn
        .volumes
        .iter()
        .filter(|v| {
            v.text("/status/state") == "attached" && v.text("/status/currentNodeID") == node
        })
        .map(|v| v.name())
        .collect();
    if !attached.is_empty() {
        return Err(format!("some volumes are still attached {attached:?}"));
    }
    let policy = drain_policy(cluster);
    if policy == "always-allow" {
        return Ok(());
    }
    let here: Vec<&Replica> = cluster
        .longhorn
        .replicas
        .iter()
        .map(|r| &**r)
        .filter(|r| r.text("/spec/nodeID") == node)
        .collect();
    if policy == "block-for-eviction" && !here.is_empty() {
        return Err("some replicas block eviction".into());
    }
    let targets = here.into_iter().filter(|r| {
        policy != "allow-if-replica-is-stopped"
            || r.text("/spec/desireState") != "stopped"
            || r.text("/status/currentState") != "stopped"
    });
    for replica in targets {
        let volume = replica.text("/spec/volumeName");
        // ListVolumePDBProtectedHealthyReplicasRO: healthy replicas on nodes whose instance
        // manager still has its budget.
        let protected_elsewhere = cluster.longhorn.replicas.iter().any(|other| {
            let other_node = other.text("/spec/nodeID");
            other.text("/spec/volumeName") == volume
                && other_node != node
                && is_healthy(other)
                && cluster
                    .pdbs
                    .get(NAMESPACE, &instance_manager_name(other_node))
                    .is_some()
        });
        // "If a replica has never been started, there is no data stored in this replica".
        let unused =
            replica.text("/spec/healthyAt").is_empty() && replica.text("/spec/failedAt").is_empty();
        if !protected_elsewhere && !unused {
            return Err(format!(
                "replica {} has no pdb on another node",
                replica.name()
            ));
        }
    }
    Ok(())
}

/// The `node-drain-policy` setting; its default when unset (types/setting.go
/// SettingDefinitionNodeDrainPolicy: block-if-contains-last-replica).
pub fn drain_policy(cluster: &Cluster) -> String {
    cluster
        .longhorn
        .settings
        .get(NAMESPACE, "node-drain-policy")
        .map(|s| s.text("/value").to_string())
        .unwrap_or_else(|| "block-if-contains-last-replica".into())
}
