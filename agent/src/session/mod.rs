//! The agent's one long-lived stream to the coordinator.
//!
//! [`run`] keeps a session up for as long as the agent runs: it dials with the
//! certificate currently on disk (so a renewed certificate is used on the next
//! connection), says hello, reports on an interval and on changes, runs the
//! commands it receives through the journal, and reconnects with backoff when
//! the stream ends.

mod backoff;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k3sfleet_pki::{DialTarget, FixedClientCert, PeerIdentity};
use k3sfleet_proto::v1::agent_service_client::AgentServiceClient;
use k3sfleet_proto::v1::{
    AgentMessage, Command, CommandOutcome, CommandResult, Hello, NodeRole, agent_message,
    coordinator_message,
};
use k3sfleet_proto::{PROTOCOL, ProtocolMismatch, negotiate};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use backoff::Backoff;

use crate::config::AgentConfig;
use crate::duties::{HostDuties, Outbox, ProgressSink};
use crate::journal::{Admission, Journal};

/// The coordinator must welcome us this soon after the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: reconnect quickly after it.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Messages queued for the coordinator before reports are dropped.
const OUTBOUND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Tls(#[from] k3sfleet_pki::TlsError),
    #[error("the agent certificate {path} is unusable")]
    Identity {
        path: std::path::PathBuf,
        #[source]
        source: k3sfleet_pki::IdentityError,
    },
    #[error(transparent)]
    Dial(#[from] k3sfleet_pki::DialError),
    #[error("the coordinator refused the session: {}", .0.message())]
    Refused(tonic::Status),
    #[error("the session failed: {}", .0.message())]
    Stream(tonic::Status),
    #[error("the coordinator did not welcome the session within {0:?}")]
    NoWelcome(Duration),
    #[error(transparent)]
    Protocol(#[from] ProtocolMismatch),
    #[error("the coordinator closed the session")]
    Closed,
}

/// Everything a session needs; shared by all sessions of one agent process.
pub struct Agent<D> {
    config: Arc<AgentConfig>,
    duties: Arc<D>,
    journal: Arc<Journal>,
    outbox: Arc<Outbox>,
    /// Woken when the session should start over at once (a renewed certificate).
    reconnect: Arc<Notify>,
}

impl<D> Clone for Agent<D> {
    fn clone(&self) -> Self {
        Agent {
            config: self.config.clone(),
            duties: self.duties.clone(),
            journal: self.journal.clone(),
            outbox: self.outbox.clone(),
            reconnect: self.reconnect.clone(),
        }
    }
}

impl<D> Agent<D> {
    pub fn new(config: Arc<AgentConfig>, duties: Arc<D>, journal: Arc<Journal>) -> Self {
        Agent {
            config,
            duties,
            journal,
            outbox: Arc::new(Outbox::default()),
            reconnect: Arc::new(Notify::new()),
        }
    }

    /// Wakes the current session to reconnect at once.
    pub fn reconnect_handle(&self) -> Arc<Notify> {
        self.reconnect.clone()
    }
}

/// How a session ended.
enum SessionEnd {
    /// The coordinator ended it, or the stream failed.
    Ended,
    /// We ended it to reconnect at once.
    Reconnect,
}

/// Reads the node name from the agent certificate and checks it against the
/// configured one.
pub fn node_name(config: &AgentConfig) -> Result<String, SessionError> {
    let cert = k3sfleet_pki::read_certificates(&config.tls.cert)
        .map_err(|err| SessionError::Tls(err.into()))?
        .remove(0);
    let identity = PeerIdentity::from_der(&cert).map_err(|source| SessionError::Identity {
        path: config.tls.cert.clone(),
        source,
    })?;
    Ok(identity.name)
}

/// Opens an mTLS channel to the coordinator with the certificate currently
/// on disk (the session and artifact downloads use it).
pub async fn dial_coordinator(config: &AgentConfig) -> Result<Channel, SessionError> {
    let roots = k3sfleet_pki::root_store(&config.tls.ca)?;
    let identity = k3sfleet_pki::certified_key(&config.tls.cert, &config.tls.key)?;
    let tls = k3sfleet_pki::client_config(roots, Some(Arc::new(FixedClientCert(identity))));
    let mut target = DialTarget::new(config.coordinator.address.clone());
    target.server_name = config.coordinator.server_name.clone();
    Ok(k3sfleet_pki::dial(&target, Arc::new(tls)).await?)
}

impl<D: HostDuties> Agent<D> {
    /// Keeps a session up until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.config.coordinator.max_reconnect_delay);
        let mut report_sequence = 0u64;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.session(&mut report_sequence) => outcome,
                _ = stop.cancelled() => return,
            };
            self.outbox.detach();
            if let Ok(SessionEnd::Reconnect) = outcome {
                tracing::info!("reconnecting with the renewed certificate");
                backoff.reset();
                continue;
            }
            if started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match &outcome {
                Err(
                    err @ (SessionError::Refused(_)
                    | SessionError::Protocol(_)
                    | SessionError::Identity { .. }),
                ) => {
                    tracing::error!(error = %display_error(err), retry_in = ?delay, "session refused")
                }
                Err(err) => {
                    tracing::warn!(error = %display_error(err), retry_in = ?delay, "session ended")
                }
                Ok(_) => tracing::info!(retry_in = ?delay, "session ended"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One session, from dialing until the stream ends.
    async fn session(&self, report_sequence: &mut u64) -> Result<SessionEnd, SessionError> {
        let config = &self.config;
        let node_name = node_name(config)?;
        let channel = dial_coordinator(config).await?;

        let (sender, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        sender
            .send(message(agent_message::Body::Hello(
                self.hello(node_name).await,
            )))
            .await
            .map_err(|_| SessionError::Closed)?;
        let mut inbound = AgentServiceClient::new(channel)
            .session(ReceiverStream::new(receiver))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();

        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::NoWelcome(WELCOME_TIMEOUT))?
            .map_err(SessionError::Refused)?;
        let welcome = match first.and_then(|m| m.body) {
            Some(coordinator_message::Body::Welcome(welcome)) => welcome,
            _ => return Err(SessionError::Closed),
        };
        let peer_range = k3sfleet_proto::v1::ProtocolRange {
            min: welcome.protocol_version,
            max: welcome.protocol_version,
        };
        if negotiate(PROTOCOL, peer_range).is_none() {
            return Err(ProtocolMismatch {
                local_name: "agent",
                local_version: env!("CARGO_PKG_VERSION").to_string(),
                local: PROTOCOL,
                peer_name: "coordinator",
                peer_version: welcome.coordinator_version,
                peer: peer_range,
            }
            .into());
        }
        tracing::info!(
            coordinator = config.coordinator.address,
            coordinator_version = welcome.coordinator_version,
            protocol = welcome.protocol_version,
            "connected to the coordinator"
        );
        k3sfleet_daemon::systemd::notify_status(&format!(
            "connected to {}",
            config.coordinator.address
        ));
        self.outbox.attach(sender.clone());
        self.outbox.send_parked().await;

        let mut changes = self.duties.changes();
        let mut ticker = tokio::time::interval(config.report.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.reconnect.notified() => return Ok(SessionEnd::Reconnect),
                _ = ticker.tick() => self.send_report(&sender, report_sequence).await?,
                changed = changes.changed() => {
                    if changed.is_ok() {
                        self.send_report(&sender, report_sequence).await?;
                        ticker.reset();
                    }
                }
                received = inbound.message() => match received.map_err(SessionError::Stream)? {
                    Some(message) => match message.body {
                        Some(coordinator_message::Body::Command(command)) => self.accept(command),
                        Some(coordinator_message::Body::Welcome(_)) => {
                            tracing::debug!("ignoring a second welcome");
                        }
                        None => tracing::debug!("ignoring an unknown message from a newer coordinator"),
                    },
                    None => return Ok(SessionEnd::Ended),
                },
            }
        }
    }

    async fn hello(&self, node_name: String) -> Hello {
        let facts = self.duties.facts();
        Hello {
            node_name,
            role: NodeRole::from(self.config.role) as i32,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: Some(PROTOCOL),
            k3s_version: self.duties.k3s_version().await,
            arch: facts.arch,
            os_id: facts.os_id,
            os_version: facts.os_version,
            boot_id: facts.boot_id,
            kernel_version: facts.kernel_version,
            report_interval_ms: self.config.report.interval.as_millis() as u32,
        }
    }

    async fn send_report(
        &self,
        sender: &mpsc::Sender<AgentMessage>,
        sequence: &mut u64,
    ) -> Result<(), SessionError> {
        let mut report = self.duties.report().await;
        *sequence += 1;
        report.sequence = *sequence;
        sender
            .send(message(agent_message::Body::Report(report)))
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Admits a command through the journal and runs it in the background.
    fn accept(&self, command: Command) {
        let id = command.id.clone();
        match self.journal.admit(&id) {
            Ok(Admission::Replay(result)) => {
                tracing::info!(command = id, "answering a re-sent command from the journal");
                let outbox = self.outbox.clone();
                tokio::spawn(async move { outbox.send_result(*result).await });
            }
            Ok(Admission::AlreadyRunning) => {
                ProgressSink::new(id, self.outbox.clone())
                    .step("running", "already running; the result will follow");
            }
            Ok(Admission::Start { interrupted }) => {
                let agent = self.clone();
                tokio::spawn(async move {
                    let progress = ProgressSink::new(id.clone(), agent.outbox.clone());
                    if interrupted {
                        progress.step(
                            "resume",
                            "an earlier run was interrupted by a restart; running again",
                        );
                    }
                    let mut result = agent.duties.execute(command, progress).await;
                    result.command_id = id.clone();
                    if let Err(err) = agent.journal.finish(&id, &result) {
                        tracing::error!(command = id, error = %display_error(&err), "recording the result failed");
                    }
                    agent.outbox.send_result(result).await;
                });
            }
            Err(err) => {
                let outbox = self.outbox.clone();
                let result = CommandResult {
                    command_id: id,
                    outcome: CommandOutcome::Rejected as i32,
                    message: err.to_string(),
                    ..Default::default()
                };
                tokio::spawn(async move { outbox.send_result(result).await });
            }
        }
    }
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

/// An error and its causes on one line.
pub fn display_error(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
