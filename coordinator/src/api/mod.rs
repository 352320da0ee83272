//! The gRPC services the coordinator serves.

mod admin;
mod agent;

pub use admin::AdminApi;
pub use agent::AgentApi;
