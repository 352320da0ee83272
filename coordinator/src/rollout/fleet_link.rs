//! The rollout's link to the agents, served by the fleet registry: what each
//! agent last said, and commands sent over its session and waited for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{Command, CommandResult, Connectivity, Health, NodeRole, command_event};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::link::{AgentLink, AgentView, LinkError, Presence};
use crate::clock::Clock;
use crate::fleet::Fleet;

/// The etcd member check's id prefix (agent/src/etcd.rs).
const ETCD_CHECK: &str = "etcd";

pub struct FleetLink {
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
    /// How long a command waits for its agent to come back before it fails.
    agent_wait: Duration,
}

impl FleetLink {
    pub fn new(fleet: Arc<Fleet>, clock: Arc<dyn Clock>, agent_wait: Duration) -> Self {
        FleetLink {
            fleet,
            clock,
            agent_wait,
        }
    }

    fn presence(&self, node: &str) -> Option<Presence> {
        self.fleet
            .connectivity_of(node, self.clock.now_ms())
            .map(presence)
    }
}

fn presence(connectivity: Connectivity) -> Presence {
    match connectivity {
        Connectivity::Connected => Presence::Connected,
        Connectivity::Unreachable => Presence::Unreachable,
        Connectivity::Disconnected | Connectivity::Unspecified => Presence::Disconnected,
    }
}

impl AgentLink for FleetLink {
    fn agents(&self) -> BTreeMap<String, AgentView> {
        let now = self.clock.now_ms();
        self.fleet
            .summaries(now)
            .into_iter()
            .map(|summary| {
                let detail = self.fleet.detail(&summary.name, now);
                let report = detail.as_ref().and_then(|d| d.last_report.clone());
                let k3s = report.as_ref().and_then(|r| r.k3s.clone());
                let checks = report.map(|r| r.checks).unwrap_or_default();
                let etcd = checks
                    .iter()
                    .find(|c| c.id.starts_with(ETCD_CHECK))
                    .map(|check| {
                        if check.status == Health::Ok as i32 {
                            Ok(())
                        } else {
                            Err(check.message.clone())
                        }
                    });
                let view = AgentView {
                    presence: presence(
                        Connectivity::try_from(summary.connectivity)
                            .unwrap_or(Connectivity::Unspecified),
                    ),
                    server: summary.role == NodeRole::Server as i32,
                    arch: detail
                        .and_then(|d| d.last_hello)
                        .map(|h| h.arch)
                        .unwrap_or_default(),
                    k3s_version: k3s
                        .as_ref()
                        .map(|k| k.installed_version.clone())
                        .unwrap_or_else(|| summary.k3s_version.clone()),
                    binary_sha256: k3s.map(|k| k.binary_sha256).unwrap_or_default(),
                    failing_checks: checks
                        .iter()
                        .filter(|c| c.status == Health::Error as i32)
                        .map(|c| format!("{} is failing: {}", c.id, c.message))
                        .collect(),
                    checks: checks.iter().map(|c| c.id.clone()).collect(),
                    etcd,
                };
                (summary.name, view)
            })
            .collect()
    }

    /// Sends the command and waits for its result, showing its progress. An
    /// agent that drops away gets the command again when it returns (same id:
    /// it runs once); one that stays away too long fails the command.
    fn run(
        &self,
        node: String,
        command: Command,
        timeout: Duration,
        progress: mpsc::Sender<String>,
    ) -> BoxFuture<'_, Result<CommandResult, LinkError>> {
        Box::pin(async move {
            let unknown = |_| LinkError::UnknownNode(node.clone());
            let mut events = self
                .fleet
                .send_command(&node, command.clone())
                .map_err(unknown)?;
            let deadline = Instant::now() + timeout;
            let mut away_since: Option<Instant> = None;
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => match event.event {
                            Some(command_event::Event::Progress(step)) => {
                                let _ = progress.send(format!("{}: {}", step.step, step.message)).await;
                            }
                            Some(command_event::Event::Result(result)) => return Ok(result),
                            None => {}
                        },
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => {
                            // Forgotten (its waiter gave up, or a restart): send it again.
                            events = self.fleet.send_command(&node, command.clone()).map_err(unknown)?;
                        }
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        match (self.presence(&node) == Some(Presence::Connected), away_since) {
                            (true, _) => away_since = None,
                            (false, None) => {
                                away_since = Some(Instant::now());
                                let _ = progress.send("agent disconnected; waiting for it to return (the command will be sent again)".into()).await;
                            }
                            (false, Some(since)) if since.elapsed() > self.agent_wait => {
                                self.fleet.forget_command(&node, &command.id);
                                return Err(LinkError::AgentAway { command: command.id.clone(), away: self.agent_wait });
                            }
                            (false, Some(_)) => {}
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        self.fleet.forget_command(&node, &command.id);
                        return Err(LinkError::NoResult { command: command.id.clone(), timeout });
                    }
                }
            }
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.fleet.subscribe()
    }
}
