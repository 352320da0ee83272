//! Rolling K3s upgrades.

pub mod planner;
pub mod rules;
pub mod state;
pub mod version;
pub mod window;
