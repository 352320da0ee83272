//! One simulated agent: the real agent's session protocol (hello, welcome,
//! reports at the interval, command results) and its reconnect policy
//! (`k3sfleet_agent::session::Backoff`), without a host behind it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_agent::session::Backoff;
use k3sfleet_proto::v1::agent_service_client::AgentServiceClient;
use k3sfleet_proto::v1::{
    AgentMessage, Command, CommandOutcome, CommandProgress, CommandResult, InstallK3sResult,
    NodeRole, agent_message, command, command_result, coordinator_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::certs::AgentIdentity;
use super::connect::{Target, dial};
use super::report;
use super::stats::{ConnectedGuard, Stats};

/// As the real agent: the coordinator must welcome us this soon.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// As the real agent: a session this long was healthy; reconnect quickly after it.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
const OUTBOUND_QUEUE: usize = 64;

/// A request to send a report now; answered with its sequence and send time.
pub type ProbeRequest = oneshot::Sender<(u64, Instant)>;

/// What every simulated agent shares.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    pub interval: Duration,
    pub max_reconnect_delay: Duration,
    pub k3s_version: String,
    pub stats: Stats,
}

#[derive(Debug)]
pub struct SimAgent {
    pub index: usize,
    pub identity: AgentIdentity,
    /// Present on the agents the latency probe uses.
    pub probe: Option<mpsc::Receiver<ProbeRequest>>,
}

/// Per-agent state that outlives sessions, as in the real agent.
struct Memory {
    sequence: u64,
    k3s_version: String,
}

impl SimAgent {
    /// Keeps a session up until `stop`, starting after `initial_delay`.
    pub async fn run(
        mut self,
        shared: Arc<Shared>,
        initial_delay: Duration,
        stop: CancellationToken,
    ) {
        tokio::select! {
            _ = tokio::time::sleep(initial_delay) => {}
            _ = stop.cancelled() => return,
        }
        let mut backoff = Backoff::new(shared.max_reconnect_delay);
        let mut memory = Memory {
            sequence: 0,
            k3s_version: shared.k3s_version.clone(),
        };
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.session(&shared, &mut memory) => outcome,
                _ = stop.cancelled() => return,
            };
            if let Err(err) = outcome {
                shared.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(agent = self.identity.name, error = %format!("{err:#}"), "session ended");
            }
            if started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn session(&mut self, shared: &Shared, memory: &mut Memory) -> anyhow::Result<()> {
        let name = &self.identity.name;
        let channel = dial(&shared.target, self.index, self.identity.key.clone())
            .await
            .context("dialing")?;
        let (sender, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        let hello = report::hello(
            name,
            NodeRole::Agent,
            &memory.k3s_version,
            shared.interval.as_millis() as u32,
        );
        sender
            .send(message(agent_message::Body::Hello(hello)))
            .await?;
        let mut inbound = AgentServiceClient::new(channel)
            .session(ReceiverStream::new(receiver))
            .await
            .context("opening the session")?
            .into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .context("no welcome")??;
        if !matches!(
            first.and_then(|m| m.body),
            Some(coordinator_message::Body::Welcome(_))
        ) {
            bail!("the coordinator did not welcome the session");
        }
        let _connected = ConnectedGuard::new(&shared.stats);

        let mut ticker = tokio::time::interval(shared.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    send_report(shared, name, memory, &sender).await?;
                }
                Some(request) = recv_probe(&mut self.probe) => {
                    let sequence = send_report(shared, name, memory, &sender).await?;
                    let _ = request.send((sequence, Instant::now()));
                }
                received = inbound.message() => match received? {
                    Some(message) => {
                        if let Some(coordinator_message::Body::Command(command)) = message.body {
                            answer(shared, memory, command, &sender).await?;
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

async fn recv_probe(probe: &mut Option<mpsc::Receiver<ProbeRequest>>) -> Option<ProbeRequest> {
    match probe {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn send_report(
    shared: &Shared,
    name: &str,
    memory: &mut Memory,
    sender: &mpsc::Sender<AgentMessage>,
) -> anyhow::Result<u64> {
    memory.sequence += 1;
    let report = report::health_report(
        name,
        &memory.k3s_version,
        memory.sequence,
        crate::load::unix_ms(),
    );
    sender
        .send(message(agent_message::Body::Report(report)))
        .await
        .context("the session closed")?;
    shared.stats.reports.fetch_add(1, Ordering::Relaxed);
    Ok(memory.sequence)
}

/// Answers a command at once, as an agent whose host does everything right:
/// an install reports one step and then the new version.
async fn answer(
    shared: &Shared,
    memory: &mut Memory,
    command: Command,
    sender: &mpsc::Sender<AgentMessage>,
) -> anyhow::Result<()> {
    let mut result = CommandResult {
        command_id: command.id.clone(),
        outcome: CommandOutcome::Succeeded as i32,
        message: "done (simulated agent)".into(),
        ..Default::default()
    };
    if let Some(command::Action::InstallK3s(install)) = &command.action {
        sender
            .send(message(agent_message::Body::Progress(CommandProgress {
                command_id: command.id.clone(),
                step: "swap".into(),
                message: format!("installing {}", install.version),
            })))
            .await?;
        let previous = std::mem::replace(&mut memory.k3s_version, install.version.clone());
        result.detail = Some(command_result::Detail::InstallK3s(InstallK3sResult {
            previous_version: previous,
            installed_version: install.version.clone(),
            ..Default::default()
        }));
    }
    sender
        .send(message(agent_message::Body::Result(result)))
        .await?;
    shared.stats.commands.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}
