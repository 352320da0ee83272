//! What the simulator counts for tests and the demo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A pod covered by a PDB disrupted while the budget allowed no disruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// `namespace/name` of the budget.
    pub pdb: String,
    /// What disrupted it ("delete", "eviction", "status update").
    pub action: String,
    /// RFC 3339 wall time.
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub pdb_violations: u64,
    pub violations: Vec<Violation>,
    /// Evictions that deleted a pod (dry runs excluded).
    pub evictions_accepted: u64,
    /// 429 answers per PDB (`namespace/name`).
    pub evictions_refused: BTreeMap<String, u64>,
    /// Evictions refused with 409 because the pod's UID was no longer the
    /// one asked for, after the budget had been spent (as the real API
    /// server does).
    #[serde(default)]
    pub evictions_stale_uid: u64,
    /// Pods deleted through the API (plain DELETE or eviction).
    pub pods_deleted: u64,
    /// Pods created by controllers to replace lost ones.
    pub pods_recreated: u64,
    /// Longhorn volumes that fell to no healthy replica (the simulated Longhorn judges).
    #[serde(default)]
    pub longhorn_violations: Vec<crate::longhorn::LonghornViolation>,
    /// The fewest healthy replicas each Longhorn volume had at any moment.
    #[serde(default)]
    pub longhorn_lowest_healthy: BTreeMap<String, u64>,
    /// Replicas Longhorn rebuilt (in place or elsewhere).
    #[serde(default)]
    pub longhorn_rebuilds: u64,
}

/// What the simulated Longhorn judged: kubesim's own, or a [`crate::longhorn::Mirror`]'s on
/// another cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LonghornStats {
    /// Volumes that fell to no healthy replica.
    pub violations: Vec<crate::longhorn::LonghornViolation>,
    /// The fewest healthy replicas each volume had at any moment.
    pub lowest_healthy: BTreeMap<String, u64>,
    /// Replicas rebuilt (in place or elsewhere).
    pub rebuilds: u64,
}

impl Stats {
    pub fn longhorn(&self) -> LonghornStats {
        LonghornStats {
            violations: self.longhorn_violations.clone(),
            lowest_healthy: self.longhorn_lowest_healthy.clone(),
            rebuilds: self.longhorn_rebuilds,
        }
    }

    pub fn evictions_refused_total(&self) -> u64 {
        self.evictions_refused.values().sum()
    }
}
