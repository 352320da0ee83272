//! What a rollout needs from the agents, as a narrow seam: how each agent is
//! (connected, what it runs, what fails) and a way to run a command on one
//! and wait for its result. The real one is the fleet registry
//! ([`super::fleet_link`]); tests use a fake with virtual time.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{Command, CommandResult};
use tokio::sync::{mpsc, watch};

/// How the coordinator hears from an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Connected,
    /// Holds a session but has missed its reports.
    Unreachable,
    Disconnected,
}

impl Presence {
    pub fn word(self) -> &'static str {
        match self {
            Presence::Connected => "connected",
            Presence::Unreachable => "unreachable",
            Presence::Disconnected => "disconnected",
        }
    }
}

/// One agent as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub presence: Presence,
    pub server: bool,
    /// The host's architecture from its hello ("amd64", "arm64"...).
    pub arch: String,
    /// As the agent last reported; empty before its first report.
    pub k3s_version: String,
    pub binary_sha256: String,
    /// "id: message" of every check in error.
    pub failing_checks: Vec<String>,
    /// The ids of every check the agent reports.
    pub checks: Vec<String>,
    /// The etcd member check on a server: `Ok`, `Err(why)`, or `None` when
    /// the agent has reported none yet.
    pub etcd: Option<Result<(), String>>,
}

/// Why a command produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no agent named {0} has ever connected")]
    UnknownNode(String),
    #[error("the agent was away for over {away:?} while {command} ran")]
    AgentAway { command: String, away: Duration },
    #[error("no result for {command} within {timeout:?}")]
    NoResult { command: String, timeout: Duration },
    #[error("the coordinator is shutting down")]
    Cancelled,
}

impl LinkError {
    /// None of these pass by retrying at once: an agent away for long, or a
    /// command that never answers, needs the operator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LinkError::Cancelled)
    }
}

pub trait AgentLink: Send + Sync + 'static {
    /// Every agent the coordinator knows, by node name.
    fn agents(&self) -> BTreeMap<String, AgentView>;
    /// Sends `command` (again, under the same id, whenever the agent comes
    /// back) and waits for its result, passing its progress messages on.
    fn run(
        &self,
        node: String,
        command: Command,
        timeout: Duration,
        progress: mpsc::Sender<String>,
    ) -> BoxFuture<'_, Result<CommandResult, LinkError>>;
    /// Moves whenever an agent's state may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}
