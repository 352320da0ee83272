//! Draining a node through the Kubernetes Eviction API without ever breaking a
//! PodDisruptionBudget.
//!
//! Compared with `kubectl drain --ignore-daemonsets`:
//! - pods are selected by the same rules (mirror pods and DaemonSet pods stay,
//!   finished pods go, emptyDir and unmanaged pods need an explicit option; a
//!   DaemonSet pod whose DaemonSet is gone needs `force`), and the refusals are
//!   known before anything is evicted;
//! - evictions go through `pods/eviction` (policy/v1, or v1beta1 where the
//!   server's discovery says so) with bounded concurrency, never a plain DELETE;
//! - a refused eviction (429) is retried as soon as the PDB's watched status
//!   allows a disruption, with a capped backoff as the fallback, where kubectl
//!   sleeps a fixed 5 s; each refusal is reported with the PDB and its healthy
//!   counts, so a blocked drain is never silent;
//! - a pod is gone when its UID is gone (a StatefulSet pod recreated under the
//!   same name does not keep the drain waiting, and is never evicted again:
//!   evictions carry a UID precondition);
//! - the drain has a deadline and ends in a clear outcome; cordoning is
//!   separate and writes k3sfleet's claim on the Node in the same PATCH
//!   ([`claim`]), so callers only ever uncordon what they cordoned, even
//!   after a crash or a lost answer ([`session`]);
//! - a pod stuck terminating can be given up on after a while
//!   (`skip_wait_for_delete_timeout`, as kubectl's flag of that name); it
//!   does not get past a budget's refusal, only past a pod that never goes.
//!
//! The client given to [`DrainEngine::new`] must not retry 429s by itself
//! (kube's default client does, silently): build it with
//! [`crate::kube::client`], which turns that off.

pub mod claim;
pub mod cluster;
mod engine;
mod error;
mod eviction;
pub mod node;
pub(crate) mod pdb;
mod plan;
pub mod registry;
mod report;
mod retry;
pub mod selection;
pub mod session;
mod wait;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::{DrainEvent, DrainPlan, DrainResult};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

pub use claim::{Claim, CordonState, Owner};
pub(crate) use error::is_transient as is_transient_kube;
pub use error::{DrainError, one_line as describe_error};
pub use eviction::EvictionVersion;
pub use node::{Cordoned, Uncordoned};
pub use registry::{Claims, DrainGuard};
pub use report::go_duration;
pub use retry::RetryPolicy;
pub use session::{Claimant, TimeoutPolicy, cordon_and_drain};

use crate::rollout::planner::Budget;

/// How to drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOptions {
    /// The whole drain gives up after this long (TIMED_OUT).
    pub timeout: Duration,
    /// Evict pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
    /// Evict pods no controller recreates, and DaemonSet pods whose DaemonSet is gone.
    pub force: bool,
    /// Overrides each pod's terminationGracePeriodSeconds.
    pub grace_period_seconds: Option<i64>,
    /// Eviction requests in flight at once. A pod waiting on its budget does
    /// not hold one, so it never starves the node's other pods.
    pub concurrency: usize,
    /// A pod still terminating this long after its deletion began counts as
    /// gone (kubectl drain --skip-wait-for-delete-timeout). None: wait.
    pub skip_wait_for_delete_timeout: Option<Duration>,
}

/// Five minutes, like Talos and k0sctl: long enough for replacements to start
/// on a healthy cluster, short enough that a stuck drain is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Enough to overlap the evictions of a typical node without flooding the
/// scheduler with replacements at once.
pub const DEFAULT_CONCURRENCY: usize = 8;

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            timeout: DEFAULT_TIMEOUT,
            delete_emptydir_data: false,
            force: false,
            grace_period_seconds: None,
            concurrency: DEFAULT_CONCURRENCY,
            skip_wait_for_delete_timeout: None,
        }
    }
}

/// Cordons, plans and drains nodes, and reads PodDisruptionBudgets for the
/// rollout planner. Cheap to clone.
#[derive(Clone)]
pub struct DrainEngine {
    client: kube::Client,
    /// Which Eviction API the server speaks, discovered once.
    eviction_version: Arc<OnceCell<EvictionVersion>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DrainEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainEngine")
            .field("eviction_version", &self.eviction_version.get())
            .finish_non_exhaustive()
    }
}

impl DrainEngine {
    /// `client` must not retry 429s itself: see [`crate::kube::client`].
    pub fn new(client: kube::Client) -> Self {
        DrainEngine {
            client,
            eviction_version: Arc::new(OnceCell::new()),
            retry: RetryPolicy::DEFAULT,
        }
    }

    /// Replaces the retry policy for refused evictions (tests, benchmarks).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Cordons the node under `owner`'s claim, unless it is cordoned already
    /// (by us, by another k3sfleet owner, or by someone else: the answer
    /// says which). Idempotent.
    pub async fn cordon(&self, node: &str, owner: &Owner) -> Result<Cordoned, DrainError> {
        node::cordon(&self.client, node, owner, jiff::Timestamp::now()).await
    }

    /// Lifts the node's cordon if `owner` holds it; leaves anyone else's.
    pub async fn uncordon(&self, node: &str, owner: &Owner) -> Result<Uncordoned, DrainError> {
        node::uncordon(&self.client, node, owner).await
    }

    /// Lifts whatever cordon the node has (an operator asked by name); says
    /// whose it was.
    pub async fn uncordon_any(&self, node: &str) -> Result<CordonState, DrainError> {
        node::uncordon_any(&self.client, node).await
    }

    /// Takes over the cordon held under `from` for `to`.
    pub async fn adopt(
        &self,
        node: &str,
        from: &Claim,
        to: &Owner,
    ) -> Result<Cordoned, DrainError> {
        node::adopt(&self.client, node, from, to, jiff::Timestamp::now()).await
    }

    /// Longhorn's volumes, replicas and policy; `None` without Longhorn.
    pub async fn longhorn(
        &self,
    ) -> Result<Option<crate::longhorn::LonghornView>, crate::longhorn::LonghornError> {
        crate::longhorn::read(&self.client).await
    }

    /// Asks Longhorn to move the node's replicas off it, or stops asking.
    pub async fn request_longhorn_eviction(
        &self,
        node: &str,
        requested: bool,
    ) -> Result<(), crate::longhorn::LonghornError> {
        crate::longhorn::read::request_eviction(&self.client, node, requested).await
    }

    /// What `k3sfleet check workloads` finds, in `namespace` (or everywhere).
    pub async fn check_workloads(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<k3sfleet_proto::v1::WorkloadFinding>, DrainError> {
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        async fn list<K>(
            client: &kube::Client,
            namespace: Option<&str>,
            what: &str,
        ) -> Result<Vec<K>, DrainError>
        where
            K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug,
            K::DynamicType: Default,
        {
            let api: Api<K> = match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            Ok(api
                .list(&ListParams::default())
                .await
                .map_err(|source| DrainError::kubernetes(format!("listing {what}"), source))?
                .items)
        }
        let deployments: Vec<Deployment> = list(&self.client, namespace, "Deployments").await?;
        let statefulsets: Vec<StatefulSet> = list(&self.client, namespace, "StatefulSets").await?;
        let pdbs: Vec<PodDisruptionBudget> =
            list(&self.client, namespace, "PodDisruptionBudgets").await?;
        let pods: Vec<Pod> = list(&self.client, namespace, "pods").await?;
        let nodes = self.nodes().await?;
        Ok(crate::workloads::check(&crate::workloads::Objects {
            deployments: &deployments,
            statefulsets: &statefulsets,
            pdbs: &pdbs,
            pods: &pods,
            nodes: &nodes,
        }))
    }

    /// Every node of the cluster (one LIST), for the rollout's observations.
    pub async fn nodes(&self) -> Result<Vec<k8s_openapi::api::core::v1::Node>, DrainError> {
        Ok(
            Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|source| DrainError::kubernetes("listing the nodes", source))?
                .items,
        )
    }

    /// The dry run: every pod that would be evicted, skipped (and why), refused
    /// without an option, and the PDBs that would block right now.
    pub async fn plan(&self, node: &str, options: &DrainOptions) -> Result<DrainPlan, DrainError> {
        node::get(&self.client, node).await?;
        let pods: Vec<Pod> = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|source| {
                DrainError::kubernetes(format!("listing the pods on {node}"), source)
            })?
            .items;
        let pdbs = self.list_pdbs().await?;
        let missing = plan::missing_daemonsets(&self.client, &pods, None).await?;
        let mut plan = plan::Plan::build(pods, &pdbs, &missing, options).to_proto();
        // Longhorn's budgets: say what Longhorn waits for.
        let longhorn_blocks = plan.blocking.iter().any(|b| {
            b.pdb
                .starts_with(&format!("{}/", crate::longhorn::NAMESPACE))
        });
        if longhorn_blocks && let Ok(Some(view)) = self.longhorn().await {
            let why = crate::longhorn::rules::why_instance_manager_stays(&view, node);
            for block in plan.blocking.iter_mut().filter(|b| {
                b.pdb
                    .starts_with(&format!("{}/", crate::longhorn::NAMESPACE))
            }) {
                block.longhorn = why.clone();
            }
        }
        Ok(plan)
    }

    /// Evicts the node's pods (does NOT cordon: callers cordon first), streaming
    /// plan, evicting, blocked and gone events on `events`, and returns the
    /// DrainResult: DRAINED, TIMED_OUT ("blocked by PDB ns/name for 5m0s (2/3
    /// healthy)") or FAILED with the reason, with wait totals by reason.
    /// `left_cordoned` is left for the caller, who owns the cordon.
    ///
    /// Stops promptly when `cancel` fires (FAILED "cancelled"). Idempotent:
    /// running it again on a half-drained node finishes the job. `Err` only
    /// when the drain could not begin (no such node, no Eviction API).
    pub async fn drain(
        &self,
        node: &str,
        options: &DrainOptions,
        events: mpsc::Sender<DrainEvent>,
        cancel: CancellationToken,
    ) -> Result<DrainResult, DrainError> {
        engine::run(self, node, options, events, cancel).await
    }

    /// For the rollout planner: every PDB with its live disruptionsAllowed and,
    /// per node, how many healthy (Ready, not terminating) pods it covers there.
    pub async fn budgets(&self) -> Result<Vec<Budget>, DrainError> {
        let pdbs = self.list_pdbs().await?;
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| DrainError::kubernetes("listing all pods", source))?
            .items;
        Ok(pdb::budgets(&pdbs, &pods))
    }

    async fn list_pdbs(&self) -> Result<Vec<PodDisruptionBudget>, DrainError> {
        Ok(Api::<PodDisruptionBudget>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| DrainError::kubernetes("listing PodDisruptionBudgets", source))?
            .items)
    }

    /// Which Eviction API to use, from discovery (cached).
    async fn eviction_version(&self) -> Result<EvictionVersion, DrainError> {
        self.eviction_version
            .get_or_try_init(|| eviction::discover(&self.client))
            .await
            .copied()
    }
}
