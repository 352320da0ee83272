//! The k3sfleet host agent.
//!
//! Installed on every host of the fleet and run by systemd: it manages the K3s
//! binary, enrolls the host in Tailscale, checks disks and the Longhorn
//! prerequisites, exposes Prometheus metrics, and holds one mutually
//! authenticated gRPC stream to the coordinator.

pub mod check_cmd;
pub mod checks;
pub mod config;
pub mod disks;
pub mod duties;
pub mod host;
pub mod host_agent;
pub mod journal;
pub mod k3s;
pub mod metrics;
pub mod observe;
pub mod remediate;
pub mod renewal;
pub mod session;
pub mod tailscale;
