//! The gRPC services the coordinator serves.

mod access;
mod admin;
mod agent;
mod drain;
mod rollout;

pub use access::AccessApi;
pub use admin::AdminApi;
pub use agent::AgentApi;
pub use drain::{DrainApi, dry_run_summary, outcome_name};
pub use rollout::RolloutApi;
