//! What a rollout needs from Kubernetes, as a narrow seam: the real one is the
//! drain engine's kube-rs client ([`crate::drain::cluster`]); tests use an
//! in-memory fake with virtual time. The engine never talks to the API
//! directly.

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{DrainEvent, DrainResult, UpgradeOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::planner::Budget;
use crate::drain::{Claim, CordonState, Cordoned, Owner, Uncordoned};
use crate::longhorn::LonghornView;

/// A node as the Kubernetes API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub ready: bool,
    pub kubelet_version: String,
    pub cordon: CordonState,
}

impl NodeState {
    pub fn unschedulable(&self) -> bool {
        self.cordon != CordonState::Schedulable
    }

    pub fn claim(&self) -> Option<&Claim> {
        self.cordon.claim()
    }
}

/// A Kubernetes call that failed, and whether trying again may help: the
/// API server unreachable, overloaded or conflicting passes; 403, 404 or an
/// invalid request does not, and pauses the rollout at once with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClusterError {
    pub message: String,
    pub retryable: bool,
}

impl ClusterError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ClusterError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        ClusterError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Options for draining one node during a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRequest {
    pub timeout: std::time::Duration,
    pub delete_emptydir_data: bool,
    pub force: bool,
    pub skip_wait_for_delete_timeout: Option<std::time::Duration>,
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
            skip_wait_for_delete_timeout: match options.skip_wait_for_delete_timeout_seconds {
                0 => None,
                seconds => Some(std::time::Duration::from_secs(seconds.into())),
            },
        }
    }
}

pub trait Cluster: Send + Sync + 'static {
    /// Every node (one LIST).
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeState>, ClusterError>>;
    /// Cordons under `owner`'s claim unless cordoned already; idempotent.
    fn cordon(&self, name: String, owner: Owner) -> BoxFuture<'_, Result<Cordoned, ClusterError>>;
    /// Lifts the cordon if `owner` holds it; idempotent.
    fn uncordon(
        &self,
        name: String,
        owner: Owner,
    ) -> BoxFuture<'_, Result<Uncordoned, ClusterError>>;
    /// Takes over the cordon held under `from` for `to`.
    fn adopt(
        &self,
        name: String,
        from: Claim,
        to: Owner,
    ) -> BoxFuture<'_, Result<Cordoned, ClusterError>>;
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
    /// Longhorn's state; `None` when Longhorn is not installed.
    fn longhorn(&self) -> BoxFuture<'_, Result<Option<LonghornView>, ClusterError>>;
    /// Asks Longhorn to move the node's replicas off it (or stops asking).
    fn request_longhorn_eviction(
        &self,
        name: String,
        requested: bool,
    ) -> BoxFuture<'_, Result<(), ClusterError>>;
}
