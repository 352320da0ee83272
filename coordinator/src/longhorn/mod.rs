//! Longhorn, as the drain and the rollout see it: which nodes hold which
//! volumes' replicas, which replicas are healthy, where volumes are
//! attached, and the node drain policy in force. Read from Longhorn's own
//! custom resources (longhorn.io/v1beta2 in `longhorn-system`); where they
//! are absent, Longhorn is not installed and nothing here applies.
//!
//! The rules Longhorn applies to a drain (longhorn-manager's
//! instance_manager_controller.go, `canDeleteInstanceManagerPDB`): it keeps a
//! PodDisruptionBudget on a node's instance-manager pod while any volume is
//! attached there, and, unless the policy is `always-allow`, while the node
//! holds a replica whose volume has no healthy replica protected on another
//! node (`block-if-contains-last-replica`, the default), any replica at all
//! (`block-for-eviction`), or any running replica (`allow-if-replica-is-stopped`).

pub mod read;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;

pub use read::{LonghornError, read};

/// The namespace Longhorn runs in.
pub const NAMESPACE: &str = "longhorn-system";
/// The label on instance-manager pods (and in their budgets' selectors).
pub const COMPONENT_LABEL: &str = "longhorn.io/component";
pub const INSTANCE_MANAGER: &str = "instance-manager";
/// The label naming an instance manager's node.
pub const NODE_LABEL: &str = "longhorn.io/node";

/// Longhorn's `node-drain-policy` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPolicy {
    BlockIfContainsLastReplica,
    BlockForEviction,
    BlockForEvictionIfContainsLastReplica,
    AllowIfReplicaIsStopped,
    AlwaysAllow,
}

impl DrainPolicy {
    /// Longhorn's default.
    pub const DEFAULT: DrainPolicy = DrainPolicy::BlockIfContainsLastReplica;

    pub fn parse(text: &str) -> Option<DrainPolicy> {
        Some(match text {
            "block-if-contains-last-replica" => DrainPolicy::BlockIfContainsLastReplica,
            "block-for-eviction" => DrainPolicy::BlockForEviction,
            "block-for-eviction-if-contains-last-replica" => {
                DrainPolicy::BlockForEvictionIfContainsLastReplica
            }
            "allow-if-replica-is-stopped" => DrainPolicy::AllowIfReplicaIsStopped,
            "always-allow" => DrainPolicy::AlwaysAllow,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DrainPolicy::BlockIfContainsLastReplica => "block-if-contains-last-replica",
            DrainPolicy::BlockForEviction => "block-for-eviction",
            DrainPolicy::BlockForEvictionIfContainsLastReplica => {
                "block-for-eviction-if-contains-last-replica"
            }
            DrainPolicy::AllowIfReplicaIsStopped => "allow-if-replica-is-stopped",
            DrainPolicy::AlwaysAllow => "always-allow",
        }
    }

    /// Whether Longhorn keeps a node that holds the last healthy replica of
    /// a volume from being drained.
    pub fn guards_last_replica(self) -> bool {
        !matches!(self, DrainPolicy::AlwaysAllow)
    }
}

impl fmt::Display for DrainPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replica of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    pub node: String,
    /// Rebuilt and not failed since (`spec.healthyAt` set, `spec.failedAt` empty).
    pub healthy: bool,
    /// Stopped on purpose (desired and current state both `stopped`).
    pub stopped: bool,
}

/// One volume and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub wanted_replicas: u32,
    /// `healthy`, `degraded`, `faulted`, `unknown` (Longhorn's words).
    pub robustness: String,
    /// The node it is attached to, if attached.
    pub attached_to: Option<String>,
    pub replicas: Vec<Replica>,
}

impl Volume {
    pub fn healthy_replicas(&self) -> usize {
        self.replicas.iter().filter(|r| r.healthy).count()
    }

    /// Every replica it wants is healthy: nothing is rebuilding.
    pub fn is_whole(&self) -> bool {
        self.healthy_replicas() >= self.wanted_replicas as usize
            && self.robustness != "degraded"
            && self.robustness != "faulted"
    }

    pub fn has_replica_on(&self, node: &str) -> bool {
        self.replicas.iter().any(|r| r.node == node)
    }

    /// "pvc-1 (degraded, 1 of 3 replicas healthy)".
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {} of {} replicas healthy)",
            self.name,
            if self.robustness.is_empty() {
                "unknown"
            } else {
                &self.robustness
            },
            self.healthy_replicas(),
            self.wanted_replicas
        )
    }
}

/// Longhorn's state, when it is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LonghornView {
    pub policy: DrainPolicy,
    /// Nodes Longhorn knows (its Node resources), and whether an eviction of
    /// their replicas was requested.
    pub nodes: BTreeMap<String, bool>,
    pub volumes: Vec<Volume>,
}

impl LonghornView {
    pub fn is_longhorn_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Volumes with a replica on `node`.
    pub fn volumes_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Volume> + 'a {
        self.volumes.iter().filter(move |v| v.has_replica_on(node))
    }
}
