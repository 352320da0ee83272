//! What a rollout needs from Kubernetes, as a narrow seam: the real one is the
//! drain engine's kube-rs client; the engine never talks to the API directly.

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{DrainEvent, DrainResult, UpgradeOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::planner::Budget;

/// A node as the Kubernetes API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub ready: bool,
    pub kubelet_version: String,
    pub unschedulable: bool,
}

/// A Kubernetes call that failed; worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(pub String);

/// Options for draining one node during a rollout.
#[derive(Debug, Clone)]
pub struct DrainRequest {
    pub timeout: std::time::Duration,
    pub delete_emptydir_data: bool,
    pub force: bool,
}

impl DrainRequest {
    /// Ten minutes unless the rollout says otherwise: a node's replacements
    /// may need to pull images.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

    pub fn for_rollout(options: &UpgradeOptions) -> DrainRequest {
        DrainRequest {
            timeout: match options.drain_timeout_seconds {
                0 => Self::DEFAULT_TIMEOUT,
                seconds => std::time::Duration::from_secs(seconds.into()),
            },
            delete_emptydir_data: options.delete_emptydir_data,
            force: options.force,
        }
    }
}

pub trait Cluster: Send + Sync + 'static {
    fn node(&self, name: String) -> BoxFuture<'_, Result<Option<NodeState>, ClusterError>>;
    /// Marks unschedulable; idempotent.
    fn cordon(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>>;
    /// Makes schedulable; idempotent.
    fn uncordon(&self, name: String) -> BoxFuture<'_, Result<(), ClusterError>>;
    fn drain(
        &self,
        name: String,
        request: DrainRequest,
        events: mpsc::Sender<DrainEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<DrainResult, ClusterError>>;
    /// Pods that would stop the node's drain before it starts, each as
    /// "ns/name (why)"; empty when the drain can begin.
    fn drain_refusals(
        &self,
        name: String,
        request: DrainRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>>;
    fn budgets(&self) -> BoxFuture<'_, Result<Vec<Budget>, ClusterError>>;
}
