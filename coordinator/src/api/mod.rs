//! The gRPC services the coordinator serves.

mod access;
mod admin;
mod agent;
mod rollout;

pub use access::AccessApi;
pub use admin::AdminApi;
pub use agent::AgentApi;
pub use rollout::RolloutApi;
