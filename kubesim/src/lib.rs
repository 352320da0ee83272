//! A simulated Kubernetes API server for k3sfleet's tests and demo.
//!
//! It serves the Kubernetes HTTP API (plain HTTP, real Kubernetes JSON) for what k3sfleet and
//! `kubectl drain` use, faithfully enough that kubectl (1.20 and current) and kube-rs work
//! against it unchanged: discovery, nodes (incl. `nodes/{name}/status`), pods with graceful
//! deletion and the eviction subresource (policy/v1 and v1beta1) with the API server's PDB
//! rules, PodDisruptionBudgets with live status, Deployments/ReplicaSets/StatefulSets/
//! DaemonSets with controllers that replace lost pods, a scheduler, watches, and tables.
//!
//! # Starting one in-process
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k3sfleet_kubesim::{KubeSim, Scenario};
//! let scenario = Scenario::from_file("kubesim/scenarios/demo.toml".as_ref())?;
//! let sim = KubeSim::start(&scenario, "127.0.0.1:0").await?;
//! sim.write_kubeconfig("/tmp/kubeconfig".as_ref())?;     // for kubectl / kube-rs
//! println!("{} violations", sim.stats().pdb_violations);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Stand-in kubelets (how a node registers and reports status)
//! Exactly as a kubelet does:
//! 1. `POST /api/v1/nodes` with a `Node` (409 AlreadyExists if the scenario already has it;
//!    then carry on, as the kubelet does).
//! 2. `PATCH /api/v1/nodes/{name}/status` with `Content-Type:
//!    application/strategic-merge-patch+json` and a body such as
//!    `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady",
//!    "lastHeartbeatTime":"..."}],"nodeInfo":{"kubeletVersion":"v1.33.5+k3s1"}}}`.
//!    Conditions merge by `type`; `nodeInfo` fields merge. See [`kubelet`] for helpers.
//!
//! Every create or status write of a node counts as a heartbeat. With
//! `timings.node_monitor_grace` set, a node created through the API (or declared
//! `kubelet = "external"` in the scenario) that stops heartbeating goes Ready=Unknown.
//!
//! # Control surface
//! `GET /sim/v1/stats`, `GET|PUT|DELETE /sim/v1/faults` (see [`api::control`]).

pub mod api;
pub mod cluster;
pub mod controllers;
pub mod error;
pub mod kinds;
pub mod kubelet;
pub mod longhorn;
pub mod scenario;
pub mod selector;
pub mod server;
pub mod store;
pub mod time;

pub use api::faults::Faults;
pub use cluster::{Stats, Violation};
pub use longhorn::LonghornViolation;
pub use scenario::{Scenario, ScenarioError};
pub use server::{KubeSim, KubeconfigError, Running, StartError};
