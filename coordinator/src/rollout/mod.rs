//! Rolling K3s upgrades: servers first and one at a time with etcd quorum
//! guarded, then workers in PDB-safe waves, with health gates,
//! pause/resume/abort, and state that survives a coordinator crash.

pub mod alerts;
pub mod cluster;
pub mod engine;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod rules;
pub mod state;
pub mod status;
mod steps;
pub mod version;
pub mod window;
mod worker;

pub use engine::{EngineSettings, RolloutEngine, RolloutError};
