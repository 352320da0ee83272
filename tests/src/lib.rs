//! The harness end-to-end tests share: a throw-away fleet PKI, real
//! coordinator, agent and CLI processes run from the workspace's build, and
//! the rolling-upgrade checks.
//!
//! Binaries are taken from the cargo target directory this test binary lives
//! in; `scripts/test.sh` builds them before running the tests.

pub mod differential;
pub mod monitoring;
pub mod pki;
pub mod process;
pub mod real;
pub mod rollout;
pub mod small_disk;
pub mod stateful;
pub mod tailnet;
pub mod wait;

pub use pki::TestPki;
pub use process::{AgentProcess, Cli, CoordinatorProcess, bin};
pub use wait::wait_until;
