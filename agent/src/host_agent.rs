//! The real host duties: what `k3sfleet-agent run` does on a host.

use std::sync::Arc;

use k3sfleet_proto::v1::{Command, CommandOutcome, CommandResult, Health, HealthReport};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::duties::{HostDuties, ProgressSink};
use crate::host::{HostFacts, HostFigureSampler, HostRoot};

pub struct HostAgent {
    root: HostRoot,
    figures: HostFigureSampler,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl HostAgent {
    pub fn new(config: &AgentConfig) -> Arc<Self> {
        Arc::new(HostAgent {
            root: HostRoot::new(config.host.root.clone()),
            figures: HostFigureSampler::default(),
            changes: watch::channel(0).0,
        })
    }
}

impl HostDuties for HostAgent {
    fn facts(&self) -> HostFacts {
        HostFacts::read(&self.root)
    }

    async fn k3s_version(&self) -> String {
        String::new()
    }

    async fn report(&self) -> HealthReport {
        HealthReport {
            observed_at_unix_ms: unix_ms(),
            overall: Health::Ok as i32,
            host: Some(self.figures.sample()),
            ..Default::default()
        }
    }

    async fn execute(&self, command: Command, _progress: ProgressSink) -> CommandResult {
        CommandResult {
            command_id: command.id,
            outcome: CommandOutcome::Rejected as i32,
            message: "this agent does not run host commands yet".into(),
            ..Default::default()
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
