//! When the real cluster has settled: every node Ready, every pod that can
//! run Ready, every budget has counted them.

use std::time::{Duration, Instant};

use anyhow::bail;
use k3sfleet_kubesim::Scenario;
use k3sfleet_kubesim::scenario::manifests;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::RealCluster;

impl RealCluster {
    /// Waits until every node is Ready and every pod the scenario expects
    /// running is Ready, and every budget has counted its pods.
    pub(super) fn wait_settled(
        &self,
        scenario: &Scenario,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let expected_nodes = scenario.nodes.len();
        loop {
            let problem = self.unsettled(expected_nodes);
            match problem {
                Ok(None) => return Ok(()),
                Ok(Some(why)) | Err(why) if Instant::now() >= deadline => {
                    bail!("the real cluster did not settle within {timeout:?}: {why}")
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// What is not settled yet, if anything.
    fn unsettled(&self, expected_nodes: usize) -> Result<Option<String>, String> {
        let nodes = self.nodes().map_err(|e| format!("{e:#}"))?;
        let ready = nodes.iter().filter(|n| node_ready(n)).count();
        if nodes.len() < expected_nodes || ready < expected_nodes {
            return Ok(Some(format!("{ready} of {expected_nodes} nodes Ready")));
        }
        let pods = self.pods().map_err(|e| format!("{e:#}"))?;
        let waiting: Vec<String> = pods
            .iter()
            .filter(|p| expected_running(p) && !pod_ready(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !waiting.is_empty() {
            return Ok(Some(format!("pods not Ready: {}", waiting.join(", "))));
        }
        let pdbs = self.pdbs().map_err(|e| format!("{e:#}"))?;
        for pdb in &pdbs {
            let status = pdb.status.clone().unwrap_or_default();
            let observed =
                status.observed_generation.unwrap_or(0) >= pdb.metadata.generation.unwrap_or(0);
            // Every Ready pod it selects counted (the disruption controller
            // counts a pod that several budgets select in one of them only).
            let selects = |pdb: &PodDisruptionBudget, pod: &Pod| {
                let selector = pdb
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                pdb.metadata.namespace == pod.metadata.namespace
                    && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            let ready_pods = pods
                .iter()
                .filter(|p| selects(pdb, p))
                .filter(|p| pdbs.iter().filter(|other| selects(other, p)).count() == 1)
                .filter(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
                .count() as i32;
            if !observed || status.current_healthy < ready_pods {
                return Ok(Some(format!(
                    "budget {} not settled ({}/{ready_pods} healthy counted)",
                    pdb.metadata.name.as_deref().unwrap_or_default(),
                    status.current_healthy,
                )));
            }
        }
        Ok(None)
    }
}

pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod the scenario wants Running and Ready (not a finished or
/// never-ready one, not one no node can take, not on its way out).
fn expected_running(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let unschedulable = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            });
    pod.metadata.deletion_timestamp.is_none()
        && !unschedulable
        && !annotations.contains_key(manifests::PHASE)
        && !annotations.contains_key(manifests::NEVER_READY)
}
