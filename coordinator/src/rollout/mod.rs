//! Rolling K3s upgrades: servers first and one at a time with etcd quorum
//! guarded, then workers as fast as the PodDisruptionBudgets allow, with
//! health gates, pause/resume/abort, and state that survives a coordinator
//! crash.
//!
//! Split by idea:
//! - the decision, pure: [`state`] (steps, phases, operators' controls),
//!   [`decide`] (what next, from the record and what was observed),
//!   [`transition`] (what each decision changes), [`planner`] (which workers
//!   may go down together), [`rules`] and [`version`] (which upgrades are
//!   allowed), [`window`], [`observed`] (health rules);
//! - the executors, I/O: [`execute`], behind the seams [`cluster`] (Kubernetes),
//!   [`link`] (agents) and [`alerts`];
//! - the store: [`store`] (SQLite or memory, generation-guarded);
//! - the engine, the one writer: [`engine`];
//! - the views: [`view`] (the API's status), [`plan`] (`upgrade plan`), [`metrics`].

pub mod action;
pub mod alerts;
pub mod cluster;
pub mod decide;
pub mod engine;
pub mod execute;
pub mod fleet_link;
pub mod link;
pub mod metrics;
pub mod observed;
pub mod plan;
pub mod planner;
pub mod rules;
pub mod settings;
pub mod state;
pub mod store;
pub mod transition;
pub mod version;
pub mod view;
pub mod window;

pub use engine::{AlertSource, HttpAlerts, Parts, RolloutEngine, RolloutError, View};
pub use settings::EngineSettings;
