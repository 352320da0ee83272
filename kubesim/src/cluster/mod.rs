//! The state of the simulated cluster: one store per kind, the cluster-wide resourceVersion
//! counter, the simulator's own bookkeeping, and statistics. All mutation goes through here
//! while the caller holds the cluster lock, so every API request sees a consistent state
//! (PDB status is recomputed after each change, before the next request is served).

pub mod eviction;
pub mod fields;
pub mod objects;
pub mod pods;
mod stats;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use stats::{LonghornStats, Stats, Violation};

use crate::controllers::SimState;
use crate::scenario::Timings;
use crate::store::Store;
use crate::time::TimeScale;

/// Settings fixed for the life of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub kubernetes_version: String,
    pub timings: Timings,
    pub scale: TimeScale,
    /// Events kept per kind for watch resumption.
    pub watch_history: usize,
    /// The simulated Longhorn, when the scenario installs it.
    pub longhorn: Option<crate::longhorn::LonghornConfig>,
}

#[derive(Debug)]
pub struct Cluster {
    rv: u64,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub namespaces: Store<Namespace>,
    pub deployments: Store<Deployment>,
    pub replicasets: Store<ReplicaSet>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
    pub longhorn: crate::longhorn::Stores,
    pub(crate) sim: SimState,
    pub(crate) config: ClusterConfig,
    pub(crate) stats: Stats,
    rng: StdRng,
}

/// Characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Cluster {
    pub fn new(config: ClusterConfig, seed: u64) -> Self {
        Self {
            rv: 0,
            nodes: Store::with_history(config.watch_history),
            pods: Store::with_history(config.watch_history),
            pdbs: Store::with_history(config.watch_history),
            namespaces: Store::with_history(config.watch_history),
            deployments: Store::with_history(config.watch_history),
            replicasets: Store::with_history(config.watch_history),
            statefulsets: Store::with_history(config.watch_history),
            daemonsets: Store::with_history(config.watch_history),
            longhorn: crate::longhorn::Stores::with_history(config.watch_history),
            sim: SimState::default(),
            config,
            stats: Stats::default(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The latest resourceVersion handed out (what a list reports).
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    pub(crate) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// A random RFC 4122 version-4 UID.
    pub(crate) fn new_uid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        let h = hex::encode(bytes);
        format!(
            "{}-{}-4{}-{}{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            ["8", "9", "a", "b"][usize::from(bytes[8] & 3)],
            &h[17..20],
            &h[20..32]
        )
    }

    /// A random suffix like the `generateName` ones (`web-7d4f8b9c5d-x2k4p`).
    pub(crate) fn random_suffix(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(NAME_ALPHABET[self.rng.random_range(0..NAME_ALPHABET.len())]))
            .collect()
    }
}
