//! The k3sfleet coordinator: the fleet registry, the gRPC services agents and
//! operators call, and the `k3sfleet` CLI.

pub mod access;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod drain;
pub mod fleet;
pub mod heartbeat;
pub mod http;
pub mod kube;
pub mod longhorn;
pub mod metrics;
pub mod pki_cmd;
pub mod rate_limit;
pub mod rollout;
pub mod server;
pub mod store;
pub mod workloads;
