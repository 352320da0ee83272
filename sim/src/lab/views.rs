//! What tests ask of the lab's cluster, the same way on both tiers: kubesim
//! answers from its state, the real tier through its API and its auditor.

use k3sfleet_kubesim::cluster::LonghornStats;
use k8s_openapi::api::core::v1::{Node, Pod};

use super::{Cluster, Lab};

/// The end-of-test verdict on the cluster: kubesim's own violation count, or
/// on the real tier the auditor's three counts (see [`crate::audit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Safety {
    /// Disruptions a PodDisruptionBudget did not allow.
    pub pdb_violations: usize,
    /// Direct DELETEs of covered pods by the coordinator (real tier).
    pub coordinator_deletes: usize,
    /// Cordons the coordinator left behind or lifted without having made
    /// them (real tier).
    pub cordon_faults: usize,
    /// What was found, for the assertion message.
    pub report: String,
}

impl Safety {
    pub fn is_clean(&self) -> bool {
        self.pdb_violations == 0 && self.coordinator_deletes == 0 && self.cordon_faults == 0
    }
}

impl Lab {
    /// Every node as the cluster has it now.
    pub fn nodes(&self) -> Vec<Node> {
        self.try_nodes().expect("the real API server answers")
    }

    /// Every node, or why the API server did not answer (a real cluster
    /// without etcd quorum has no API for a while).
    pub fn try_nodes(&self) -> anyhow::Result<Vec<Node>> {
        match self.cluster() {
            Cluster::KubeSim(kubesim) => {
                Ok(kubesim.inspect(|c| c.nodes.iter().map(|n| (**n).clone()).collect()))
            }
            Cluster::Real(real) => real.nodes(),
        }
    }

    /// Every pod as the cluster has it now.
    pub fn pods(&self) -> Vec<Pod> {
        match self.cluster() {
            Cluster::KubeSim(kubesim) => {
                kubesim.inspect(|c| c.pods.iter().map(|p| (**p).clone()).collect())
            }
            Cluster::Real(real) => real.pods().expect("the real API server answers"),
        }
    }

    /// Nodes cordoned in the cluster right now.
    pub fn cordoned_nodes(&self) -> Vec<String> {
        cordoned(self.nodes())
    }

    /// Nodes cordoned now, or why the API server did not answer.
    pub fn try_cordoned_nodes(&self) -> anyhow::Result<Vec<String>> {
        self.try_nodes().map(cordoned)
    }

    /// The kubelet version each node reports.
    pub fn kubelet_versions(&self) -> Vec<(String, String)> {
        self.nodes()
            .into_iter()
            .map(|node| {
                let version = node
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|info| info.kubelet_version.clone())
                    .unwrap_or_default();
                (node.metadata.name.unwrap_or_default(), version)
            })
            .collect()
    }

    /// Whether the cluster sees `node` Ready (its kubelet's heartbeats).
    pub fn node_ready(&self, node: &str) -> bool {
        self.try_node_ready(node)
            .expect("the real API server answers")
    }

    /// Whether the cluster sees `node` Ready, or why the API server did not
    /// answer.
    pub fn try_node_ready(&self, node: &str) -> anyhow::Result<bool> {
        Ok(self
            .try_nodes()?
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))
            .is_some_and(super::real::node_ready))
    }

    /// What the simulated Longhorn judged so far (kubesim's own, or the real tier's
    /// controller); `None` when the scenario has no Longhorn.
    pub fn longhorn_stats(&self) -> Option<LonghornStats> {
        match self.cluster() {
            Cluster::KubeSim(kubesim) => self
                .spec
                .scenario
                .longhorn
                .as_ref()
                .map(|_| kubesim.stats().longhorn()),
            Cluster::Real(real) => real.longhorn().map(|longhorn| longhorn.stats()),
        }
    }

    /// The verdict on everything the cluster went through so far.
    pub fn safety(&self) -> Safety {
        match self.cluster() {
            Cluster::KubeSim(kubesim) => {
                let stats = kubesim.stats();
                Safety {
                    pdb_violations: stats.pdb_violations as usize,
                    report: format!("kubesim counted {:?}", stats.violations),
                    ..Safety::default()
                }
            }
            Cluster::Real(real) => {
                let verdict = real.auditor().verdict();
                let (a, b, c) = verdict.counts();
                Safety {
                    pdb_violations: a,
                    coordinator_deletes: b,
                    cordon_faults: c,
                    report: format!(
                        "the auditor: {verdict} (watch relists: {})",
                        real.auditor().relists()
                    ),
                }
            }
        }
    }
}

fn cordoned(nodes: Vec<Node>) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .into_iter()
        .filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    names
}
