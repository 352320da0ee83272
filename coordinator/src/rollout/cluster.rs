//! What a rollout needs from Kubernetes, as a narrow seam: the real one is the
//! drain engine's kube-rs client; the engine never talks to the API directly.

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{DrainEvent, DrainResult};
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
    fn budgets(&self) -> BoxFuture<'_, Result<Vec<Budget>, ClusterError>>;
}
