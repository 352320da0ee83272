//! The rollout engine's view of Kubernetes ([`Cluster`]), served by the
//! drain engine, so rollouts cordon, drain and read budgets exactly as
//! `k3sfleet drain` does.

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{DrainEvent, DrainResult};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::one_line;
use super::{DrainEngine, DrainError, DrainOptions, node};
use crate::rollout::cluster::{Cluster, ClusterError, DrainRequest, NodeState};
use crate::rollout::planner::Budget;

fn cluster_error(err: DrainError) -> ClusterError {
    ClusterError(one_line(&err))
}

/// Ready, kubelet version and cordon, as the node's object says.
pub fn node_state(node: &Node) -> NodeState {
    let status = node.status.as_ref();
    NodeState {
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }),
        kubelet_version: status
            .and_then(|s| s.node_info.as_ref())
            .map(|info| info.kubelet_version.clone())
            .unwrap_or_default(),
        unschedulable: node::is_unschedulable(node),
    }
}

fn drain_options(request: &DrainRequest) -> DrainOptions {
    DrainOptions {
        timeout: request.timeout,
        delete_emptydir_data: request.delete_emptydir_data,
        force: request.force,
        ..DrainOptions::default()
    }
}

impl Cluster for DrainEngine {
    fn node(&self, name: String) -> BoxFuture<'_, Result<Option<NodeState>, ClusterError>> {
        Box::pin(async move {
            match node::get(&self.client, &name).await {
                Ok(found) => Ok(Some(node_state(&found))),
                Err(DrainError::NodeNotFound { .. }) => Ok(None),
                Err(err) => Err(cluster_error(err)),
            }
        })
    }

    fn cordon(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            DrainEngine::cordon(self, &name)
                .await
                .map(|_| ())
                .map_err(cluster_error)
        })
    }

    fn uncordon(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            DrainEngine::uncordon(self, &name)
                .await
                .map(|_| ())
                .map_err(cluster_error)
        })
    }

    fn drain(
        &self,
        name: String,
        request: DrainRequest,
        events: mpsc::Sender<DrainEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<DrainResult, ClusterError>> {
        Box::pin(async move {
            DrainEngine::drain(self, &name, &drain_options(&request), events, cancel)
                .await
                .map_err(cluster_error)
        })
    }

    fn drain_refusals(
        &self,
        name: String,
        request: DrainRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>> {
        Box::pin(async move {
            let plan = DrainEngine::plan(self, &name, &drain_options(&request))
                .await
                .map_err(cluster_error)?;
            Ok(plan
                .refused
                .iter()
                .map(|refused| {
                    let pod = refused.pod.clone().unwrap_or_default();
                    format!("{}/{} ({})", pod.namespace, pod.name, refused.reason)
                })
                .collect())
        })
    }

    fn budgets(&self) -> BoxFuture<'_, Result<Vec<Budget>, ClusterError>> {
        Box::pin(async move { DrainEngine::budgets(self).await.map_err(cluster_error) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};

    #[test]
    fn node_state_reads_ready_version_and_cordon() {
        let mut node = Node {
            spec: Some(NodeSpec {
                unschedulable: Some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "v1.33.5+k3s1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            node_state(&node),
            NodeState {
                ready: true,
                kubelet_version: "v1.33.5+k3s1".into(),
                unschedulable: true,
            }
        );
        node.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        node.spec = None;
        let state = node_state(&node);
        assert!(!state.ready && !state.unschedulable);
    }
}
