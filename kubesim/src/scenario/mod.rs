//! Scenario files: a declarative description of a simulated cluster (TOML).
//!
//! ```toml
//! [cluster]
//! kubernetes_version = "v1.33.5+k3s1"  # served by /version, default kubelet version
//! time_scale = 20.0                     # cluster seconds per wall second
//!
//! [timings]                             # cluster seconds
//! replacement_delay = 5                 # a lost pod's replacement is created after this
//! ready_delay = 10                      # a scheduled pod turns Ready after this
//! termination = 2                       # a deleted pod is gone after min(this, its grace period)
//! node_monitor_grace = 40               # optional: externally heartbeated nodes go Unknown
//! pdb_sync_delay = 0                    # optional: lag before a new/changed PDB is observed
//!
//! [[nodes]]
//! name = "server-1"
//! role = "server"                       # server | agent
//! labels = { "node-role.kubernetes.io/control-plane" = "true" }
//!
//! [[deployments]]
//! namespace = "shop"
//! name = "web"
//! replicas = 3
//!
//! [[pdbs]]
//! namespace = "shop"
//! name = "web"
//! selector = { app = "web" }
//! min_available = 2                     # or "50%"; or max_unavailable
//! ```
//!
//! See `kubesim/scenarios/demo.toml` for every section (statefulsets, daemonsets, bare pods,
//! mirror pods, emptyDir, taints, node selectors).

pub(crate) mod build;
pub mod manifests;
mod validate;

pub use build::{Workloads, bare_pod, build_cluster, workloads};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::time::TimeScale;

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {origin} is not a valid scenario document")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("scenario {origin}: {field} = {value}: {why}")]
    Invalid {
        origin: String,
        field: String,
        value: String,
        why: String,
    },
}

/// A parsed and validated scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub timings: Timings,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Extra namespaces; those used by objects are created anyway.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub deployments: Vec<WorkloadSpec>,
    #[serde(default)]
    pub statefulsets: Vec<WorkloadSpec>,
    #[serde(default)]
    pub daemonsets: Vec<DaemonSetSpec>,
    #[serde(default)]
    pub pods: Vec<BarePodSpec>,
    #[serde(default)]
    pub pdbs: Vec<PdbSpec>,
    /// The simulated Longhorn (its CRDs served, its controller run), when present.
    pub longhorn: Option<LonghornSection>,
}

/// `[longhorn]`: Longhorn installed, and its volumes.
///
/// ```toml
/// [longhorn]
/// node_selector = { "node-role.kubernetes.io/worker" = "true" }  # where Longhorn runs
/// node_drain_policy = "block-if-contains-last-replica"          # Longhorn's default
/// rebuild_seconds = 30                                          # one replica's rebuild
/// replica_replenishment_wait_interval = 600                     # Longhorn's default
///
/// [[longhorn.volumes]]
/// name = "pvc-ledger-0"
/// replicas = 3
/// consumer = "billing/ledger-db-0"   # attached where this pod runs
/// nodes = ["worker-01", "worker-02", "worker-03"]  # optional: where the replicas start
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LonghornSection {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default = "default_drain_policy")]
    pub node_drain_policy: String,
    #[serde(default = "default_rebuild_seconds")]
    pub rebuild_seconds: f64,
    #[serde(default = "default_replenishment_wait")]
    pub replica_replenishment_wait_interval: f64,
    #[serde(default)]
    pub volumes: Vec<LonghornVolumeSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LonghornVolumeSpec {
    pub name: String,
    pub replicas: u32,
    /// `namespace/pod` of the pod using it.
    pub consumer: Option<String>,
    /// Nodes of its replicas at the start [default: spread over Longhorn's nodes].
    #[serde(default)]
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    #[serde(default = "default_version")]
    pub kubernetes_version: String,
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Seeds generated names and UIDs so runs are reproducible.
    #[serde(default = "one_u64")]
    pub seed: u64,
    /// Wall seconds between watch bookmarks (when clients allow them).
    #[serde(default = "default_bookmark_interval")]
    pub bookmark_interval: f64,
    /// Events kept per kind; watches from older resourceVersions get 410 Gone.
    #[serde(default = "default_watch_history")]
    pub watch_history: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            kubernetes_version: default_version(),
            time_scale: 1.0,
            seed: 1,
            bookmark_interval: default_bookmark_interval(),
            watch_history: default_watch_history(),
        }
    }
}

/// Durations in cluster seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    #[serde(default = "default_replacement_delay")]
    pub replacement_delay: f64,
    #[serde(default = "default_ready_delay")]
    pub ready_delay: f64,
    #[serde(default = "default_termination")]
    pub termination: f64,
    pub node_monitor_grace: Option<f64>,
    /// How long the disruption controller takes to observe a new or changed PDB; until then
    /// evictions it guards get 429 with retryAfterSeconds 10 ("still being processed").
    #[serde(default)]
    pub pdb_sync_delay: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            replacement_delay: default_replacement_delay(),
            ready_delay: default_ready_delay(),
            termination: default_termination(),
            node_monitor_grace: None,
            pdb_sync_delay: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    #[default]
    Agent,
}

/// Who keeps a node's status fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KubeletMode {
    /// The simulator itself: the node stays Ready.
    #[default]
    Simulated,
    /// A process outside (a stand-in K3s) PATCHes `nodes/{name}/status`; with
    /// `timings.node_monitor_grace` the node goes Ready=Unknown when it stops.
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub role: Role,
    pub kubelet_version: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<TaintSpec>,
    #[serde(default)]
    pub unschedulable: bool,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub kubelet: KubeletMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaintSpec {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

/// A Deployment or StatefulSet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
    /// Pod labels besides `app = <name>`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub empty_dir: bool,
    #[serde(default = "default_grace")]
    pub grace_period: i64,
    #[serde(default = "default_image")]
    pub image: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSetSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default = "default_grace")]
    pub grace_period: i64,
    #[serde(default = "default_image")]
    pub image: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Phase {
    #[default]
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// A pod without a controller, or (with `mirror`) a static pod's mirror.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarePodSpec {
    pub namespace: String,
    pub name: String,
    /// Where it runs; unset = the scheduler picks.
    pub node: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub empty_dir: bool,
    /// A mirror pod (annotation `kubernetes.io/config.mirror`); needs `node`.
    #[serde(default)]
    pub mirror: bool,
    #[serde(default)]
    pub phase: Phase,
    /// Whether a Running pod reports Ready (false = e.g. a crash-looping pod).
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default = "default_grace")]
    pub grace_period: i64,
    #[serde(default = "default_image")]
    pub image: String,
}

/// An integer or a percentage string such as "50%".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(i32),
    Percent(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdbSpec {
    pub namespace: String,
    pub name: String,
    /// matchLabels of the PDB's selector.
    pub selector: BTreeMap<String, String>,
    pub min_available: Option<IntOrPercent>,
    pub max_unavailable: Option<IntOrPercent>,
    /// IfHealthyBudget (default) or AlwaysAllow.
    pub unhealthy_pod_eviction_policy: Option<String>,
}

fn default_drain_policy() -> String {
    "block-if-contains-last-replica".into()
}

fn default_rebuild_seconds() -> f64 {
    30.0
}

/// Longhorn's default replica-replenishment-wait-interval (types/setting.go).
fn default_replenishment_wait() -> f64 {
    600.0
}

fn default_version() -> String {
    "v1.33.5+k3s1".into()
}
fn one() -> f64 {
    1.0
}
fn one_u64() -> u64 {
    1
}
fn yes() -> bool {
    true
}
fn default_bookmark_interval() -> f64 {
    10.0
}
fn default_watch_history() -> usize {
    crate::store::DEFAULT_HISTORY
}
fn default_replacement_delay() -> f64 {
    5.0
}
fn default_ready_delay() -> f64 {
    10.0
}
fn default_termination() -> f64 {
    2.0
}
fn default_grace() -> i64 {
    30
}
fn default_image() -> String {
    "registry.k8s.io/pause:3.10".into()
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` names the document in errors (a file name).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        validate::validate(&scenario, origin)?;
        Ok(scenario)
    }

    pub fn time_scale(&self) -> TimeScale {
        // Validated to be positive and finite.
        TimeScale::new(self.cluster.time_scale).unwrap_or(TimeScale::REAL_TIME)
    }

    /// Every namespace the scenario uses, plus the ones every cluster has.
    pub fn all_namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = ["default", "kube-system", "kube-public", "kube-node-lease"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        names.extend(self.namespaces.iter().cloned());
        names.extend(self.deployments.iter().map(|w| w.namespace.clone()));
        names.extend(self.statefulsets.iter().map(|w| w.namespace.clone()));
        names.extend(self.daemonsets.iter().map(|w| w.namespace.clone()));
        names.extend(self.pods.iter().map(|p| p.namespace.clone()));
        names.extend(self.pdbs.iter().map(|p| p.namespace.clone()));
        if self.longhorn.is_some() {
            names.push(crate::longhorn::NAMESPACE.to_string());
        }
        names.sort();
        names.dedup();
        names
    }
}
