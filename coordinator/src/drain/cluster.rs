//! The rollout engine's view of Kubernetes ([`Cluster`]), served by the
//! drain engine, so rollouts cordon, drain and read budgets exactly as
//! `k3sfleet drain` does.

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{DrainEvent, DrainResult};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claim::{Claim, CordonState, Owner};
use super::error::one_line;
use super::node::{Cordoned, Uncordoned};
use super::{DrainEngine, DrainError, DrainOptions};
use crate::longhorn::{LonghornError, LonghornView};
use crate::rollout::cluster::{Cluster, ClusterError, DrainRequest, NodeState};
use crate::rollout::planner::Budget;

/// Keeps the error's kind: whether trying again may help.
fn cluster_error(err: DrainError) -> ClusterError {
    ClusterError {
        retryable: err.is_transient(),
        message: one_line(&err),
    }
}

/// Ready, kubelet version and cordon, as the node's object says.
pub fn node_state(node: &Node) -> NodeState {
    let status = node.status.as_ref();
    NodeState {
        name: node.metadata.name.clone().unwrap_or_default(),
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
        cordon: CordonState::of(node),
    }
}

fn drain_options(request: &DrainRequest) -> DrainOptions {
    DrainOptions {
        timeout: request.timeout,
        delete_emptydir_data: request.delete_emptydir_data,
        force: request.force,
        skip_wait_for_delete_timeout: request.skip_wait_for_delete_timeout,
        ..DrainOptions::default()
    }
}

impl Cluster for DrainEngine {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeState>, ClusterError>> {
        Box::pin(async move {
            DrainEngine::nodes(self)
                .await
                .map(|nodes| nodes.iter().map(node_state).collect())
                .map_err(cluster_error)
        })
    }

    fn cordon(&self, name: String, owner: Owner) -> BoxFuture<'_, Result<Cordoned, ClusterError>> {
        Box::pin(async move {
            DrainEngine::cordon(self, &name, &owner)
                .await
                .map_err(cluster_error)
        })
    }

    fn uncordon(
        &self,
        name: String,
        owner: Owner,
    ) -> BoxFuture<'_, Result<Uncordoned, ClusterError>> {
        Box::pin(async move {
            DrainEngine::uncordon(self, &name, &owner)
                .await
                .map_err(cluster_error)
        })
    }

    fn adopt(
        &self,
        name: String,
        from: Claim,
        to: Owner,
    ) -> BoxFuture<'_, Result<Cordoned, ClusterError>> {
        Box::pin(async move {
            DrainEngine::adopt(self, &name, &from, &to)
                .await
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

    fn longhorn(&self) -> BoxFuture<'_, Result<Option<LonghornView>, ClusterError>> {
        Box::pin(async move { DrainEngine::longhorn(self).await.map_err(longhorn_error) })
    }

    fn request_longhorn_eviction(
        &self,
        name: String,
        requested: bool,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            DrainEngine::request_longhorn_eviction(self, &name, requested)
                .await
                .map_err(longhorn_error)
        })
    }
}

fn longhorn_error(err: LonghornError) -> ClusterError {
    ClusterError {
        retryable: err.is_transient(),
        message: one_line(&err),
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
        node.metadata.name = Some("worker-1".into());
        assert_eq!(
            node_state(&node),
            NodeState {
                name: "worker-1".into(),
                ready: true,
                kubelet_version: "v1.33.5+k3s1".into(),
                cordon: CordonState::Foreign,
            }
        );
        node.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        node.spec = None;
        let state = node_state(&node);
        assert!(!state.ready && !state.unschedulable());

        // A 403 stays permanent, a 503 passes: the kind survives the seam.
        let status = |code: u16| {
            DrainError::kubernetes(
                "listing the nodes",
                kube::Error::Api(
                    kube::core::Status {
                        code,
                        ..kube::core::Status::failure("no", "")
                    }
                    .boxed(),
                ),
            )
        };
        assert!(!cluster_error(status(403)).retryable);
        assert!(!cluster_error(status(404)).retryable);
        assert!(!cluster_error(status(422)).retryable);
        assert!(cluster_error(status(503)).retryable);
        assert!(cluster_error(status(429)).retryable);
    }
}
