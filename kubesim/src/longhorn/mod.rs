//! A small simulated Longhorn: the custom resources k3sfleet reads (served under
//! longhorn.io/v1beta2 in `longhorn-system` when a scenario has a `[longhorn]` section) and
//! a controller that keeps them the way longhorn-manager does, for what a drain sees:
//! - an instance-manager pod per Longhorn node, and a PodDisruptionBudget on it that Longhorn
//!   removes only when the node is cordoned and no volume would lose its last protected
//!   healthy replica ([`pdb`]);
//! - replicas that fail when their node's instance manager goes, are rebuilt in
//!   place when it comes back (taking `rebuild_seconds`), are replaced elsewhere after the
//!   replenishment wait, and move off a node whose eviction is requested ([`replicas`]);
//! - volumes attached where their consumer pod runs, with Longhorn's robustness.
//!
//! It also judges: a volume that falls to no healthy replica is recorded in
//! [`crate::Stats::longhorn_violations`] (tests and the demo read it). Sources are cited at
//! each rule: longhorn-manager's controller/instance_manager_controller.go (IM),
//! controller/volume_controller.go (VC), types/setting.go (settings).

mod install;
pub mod kinds;
pub mod mirror;
pub mod pdb;
mod replicas;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

pub use install::install;
pub use kinds::{LonghornNode, Replica, Setting, Stores, Volume, custom_resource_definitions};
pub use mirror::Mirror;

use crate::cluster::Cluster;
use crate::cluster::pods::{is_ready, is_terminating, node_name};
use crate::time::Now;

pub const NAMESPACE: &str = "longhorn-system";
/// Labels on instance-manager pods and in their budgets' selectors (types.GetInstanceManagerLabels).
pub const COMPONENT_LABEL: &str = "longhorn.io/component";
pub const NODE_LABEL: &str = "longhorn.io/node";
pub const TYPE_LABEL: &str = "longhorn.io/instance-manager-type";
pub const MANAGED_BY_LABEL: &str = "longhorn.io/managed-by";

/// Longhorn's `node-drain-policy` values (types/setting.go, NodeDrainPolicy*).
pub const DRAIN_POLICIES: &[&str] = &[
    "block-if-contains-last-replica",
    "block-for-eviction",
    "block-for-eviction-if-contains-last-replica",
    "allow-if-replica-is-stopped",
    "always-allow",
];

/// How the simulated Longhorn behaves, fixed for the cluster's life.
#[derive(Debug, Clone)]
pub struct LonghornConfig {
    /// Kubernetes nodes Longhorn runs on (empty: all).
    pub node_selector: BTreeMap<String, String>,
    /// Cluster seconds a replica takes to rebuild.
    pub rebuild_seconds: f64,
    /// `replica-replenishment-wait-interval`, cluster seconds.
    pub replenishment_wait: f64,
}

/// A volume that fell to no healthy replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LonghornViolation {
    pub volume: String,
    /// Nodes its replicas were on when it happened.
    pub replica_nodes: Vec<String>,
    /// RFC 3339 wall time.
    pub at: String,
}

/// The controller's own memory: when rebuilds finish, and who it is waiting for.
#[derive(Debug, Default)]
pub(crate) struct LonghornState {
    /// Replica name -> when its rebuild completes.
    pub rebuild_due: HashMap<String, Instant>,
    /// Replica name -> when it failed (for the replenishment wait).
    pub failed_since: HashMap<String, Instant>,
}

/// The name of `node`'s instance manager (and of its budget: types.GetPDBName returns the IM
/// name). Longhorn hashes node, image and data engine (types.GetInstanceManagerName); a
/// stable hash of the node name stands in.
pub fn instance_manager_name(node: &str) -> String {
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("instance-manager-{hash:016x}")
}

pub fn instance_manager_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (COMPONENT_LABEL.to_string(), "instance-manager".to_string()),
        (TYPE_LABEL.to_string(), "aio".to_string()),
        (NODE_LABEL.to_string(), node.to_string()),
        (MANAGED_BY_LABEL.to_string(), "longhorn-manager".to_string()),
    ])
}

impl Cluster {
    pub fn longhorn_installed(&self) -> bool {
        self.config.longhorn.is_some()
    }
}

/// Whether a replica is healthy as Longhorn counts it (`spec.healthyAt` set, `spec.failedAt`
/// empty: VC sets healthyAt when the replica turns RW and failedAt when it errors).
pub fn is_healthy(replica: &Replica) -> bool {
    !replica.text("/spec/healthyAt").is_empty() && replica.text("/spec/failedAt").is_empty()
}

pub fn is_failed(replica: &Replica) -> bool {
    !replica.text("/spec/failedAt").is_empty()
}

fn is_longhorn_node(config: &LonghornConfig, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    config
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The node's instance-manager pod, running and Ready (IM's state Running).
fn instance_manager_running(cluster: &Cluster, node: &str) -> bool {
    cluster
        .pods
        .get(NAMESPACE, &instance_manager_name(node))
        .is_some_and(|pod| !is_terminating(pod) && is_ready(pod))
}

/// Whether replicas on `node` can run: the node exists and its instance manager runs. A
/// node whose kubelet stops reporting (K3s restarting: NotReady) keeps its containers, and
/// the replicas' processes with them; what fails replicas is the instance-manager pod going.
fn node_serves_replicas(cluster: &Cluster, node: &str) -> bool {
    cluster.nodes.get("", node).is_some() && instance_manager_running(cluster, node)
}

/// Runs the simulated Longhorn once; true when it changed something.
pub(crate) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let Some(config) = cluster.config.longhorn.clone() else {
        return false;
    };
    let mut changed = false;
    changed |= sync_nodes(cluster, &config, now);
    changed |= sync_instance_managers(cluster, &config, now);
    changed |= sync_attachments(cluster);
    changed |= replicas::sync(cluster, &config, now);
    changed |= sync_robustness(cluster, now);
    changed |= pdb::sync(cluster, &config, now);
    changed
}

/// A Longhorn Node resource for every Kubernetes node Longhorn runs on (the node controller
/// creates one per node running longhorn-manager).
fn sync_nodes(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let wanted: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| is_longhorn_node(config, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut changed = false;
    for name in wanted {
        if cluster.longhorn.nodes.get(NAMESPACE, &name).is_none() {
            let node = LonghornNode::named(
                &name,
                json!({"spec": {"name": name, "allowScheduling": true, "evictionRequested": false}}),
            );
            if let Err(error) = cluster.create(node, now) {
                tracing::warn!(%error, "creating a Longhorn node");
            }
            changed = true;
        }
    }
    changed
}

/// The instance-manager pod of every Longhorn node. Longhorn recreates a missing one, but not
/// on a cordoned node: the pod names its node (spec.nodeName), so a cordon would not stop it
/// (IM handlePod: "Since `spec.nodeName` is specified during the pod creation, the node
/// cordon cannot prevent the pod being launched").
fn sync_instance_managers(cluster: &mut Cluster, config: &LonghornConfig, now: &Now) -> bool {
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| is_longhorn_node(config, n) && !is_unschedulable(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut changed = false;
    for node in nodes {
        let name = instance_manager_name(&node);
        if cluster.pods.get(NAMESPACE, &name).is_some() {
            continue;
        }
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                labels: Some(instance_manager_labels(&node)),
                // Owned by its InstanceManager resource (IM createInstanceManagerPod), so a
                // drain treats it as managed, not as a bare pod.
                owner_references: Some(vec![OwnerReference {
                    api_version: "longhorn.io/v1beta2".into(),
                    kind: "InstanceManager".into(),
                    name: name.clone(),
                    uid: format!("im-{name}"),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.clone()),
                containers: vec![Container {
                    name: "instance-manager".into(),
                    image: Some("longhornio/longhorn-instance-manager:v1.9.1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        match cluster.create(pod, now) {
            Ok(_) => changed = true,
            Err(error) => tracing::warn!(%error, "creating an instance manager"),
        }
    }
    changed
}

/// A volume is attached where its consumer pod runs (the CSI driver attaches it for the pod
/// and detaches it once the pod is gone).
fn sync_attachments(cluster: &mut Cluster) -> bool {
    let volumes: Vec<Volume> = cluster
        .longhorn
        .volumes
        .iter()
        .map(|v| (**v).clone())
        .collect();
    let mut changed = false;
    for mut volume in volumes {
        let consumer = volume.text("/spec/consumer").to_string();
        let node = consumer.split_once('/').and_then(|(ns, name)| {
            cluster
                .pods
                .get(ns, name)
                .and_then(|p| node_name(p).map(str::to_string))
        });
        let (state, current) = match node {
            Some(node) => ("attached", node),
            None => ("detached", String::new()),
        };
        if volume.text("/status/state") != state || volume.text("/status/currentNodeID") != current
        {
            volume.set("status", "state", json!(state));
            volume.set("status", "currentNodeID", json!(current));
            cluster.write(volume);
            changed = true;
        }
    }
    changed
}

/// Robustness as VC computes it for an attached volume: healthy when every wanted replica is
/// healthy, degraded with fewer, faulted with none; a detached volume's is unknown (VC
/// ReconcileVolumeState), except that one without a healthy replica is faulted. A volume
/// newly without a healthy replica is a violation.
fn sync_robustness(cluster: &mut Cluster, now: &Now) -> bool {
    let volumes: Vec<Volume> = cluster
        .longhorn
        .volumes
        .iter()
        .map(|v| (**v).clone())
        .collect();
    let mut changed = false;
    for mut volume in volumes {
        let name = volume.name().to_string();
        let mine: Vec<&Replica> = cluster
            .longhorn
            .replicas
            .iter()
            .map(|r| &**r)
            .filter(|r| r.text("/spec/volumeName") == name)
            .collect();
        let healthy = mine.iter().filter(|r| is_healthy(r)).count() as u64;
        let wanted = volume
            .pointer("/spec/numberOfReplicas")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let robustness = if healthy == 0 {
            "faulted"
        } else if volume.text("/status/state") != "attached" {
            "unknown"
        } else if healthy >= wanted {
            "healthy"
        } else {
            "degraded"
        };
        let replica_nodes: Vec<String> = mine
            .iter()
            .map(|r| r.text("/spec/nodeID").to_string())
            .collect();
        if !cluster.sim.bootstrapping {
            let stats = cluster.stats_mut();
            let lowest = stats
                .longhorn_lowest_healthy
                .entry(name.clone())
                .or_insert(healthy);
            *lowest = (*lowest).min(healthy);
            if robustness == "faulted" && volume.text("/status/robustness") != "faulted" {
                tracing::error!(volume = %name, "Longhorn volume has no healthy replica left");
                stats.longhorn_violations.push(LonghornViolation {
                    volume: name.clone(),
                    replica_nodes,
                    at: now.wall.to_string(),
                });
            }
        }
        if volume.text("/status/robustness") != robustness {
            volume.set("status", "robustness", json!(robustness));
            cluster.write(volume);
            changed = true;
        }
    }
    changed
}
