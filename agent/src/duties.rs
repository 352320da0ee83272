//! What the agent does on its host, as the session sees it: report health and
//! run commands. The real implementation is [`crate::host_agent::HostAgent`];
//! protocol tests use small fakes.

use std::future::Future;
use std::sync::{Arc, Mutex};

use k3sfleet_proto::v1::{
    AgentMessage, Command, CommandProgress, CommandResult, HealthReport, agent_message,
};
use tokio::sync::{mpsc, watch};

use crate::host::HostFacts;

pub trait HostDuties: Send + Sync + 'static {
    /// Facts about the host for the hello.
    fn facts(&self) -> HostFacts;

    /// The installed K3s version, empty when none is installed.
    fn k3s_version(&self) -> impl Future<Output = String> + Send;

    /// A fresh health report (the session fills in the sequence number).
    fn report(&self) -> impl Future<Output = HealthReport> + Send;

    /// Runs one command. Called at most once per command id while its journal
    /// entry says it is running.
    fn execute(
        &self,
        command: Command,
        progress: ProgressSink,
    ) -> impl Future<Output = CommandResult> + Send;

    /// Moves when something changed that deserves a report before the next
    /// interval (a check changing state, a service stopping).
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The current session's way to the coordinator, if there is a session.
/// Commands outlive sessions: whatever they say goes to whichever session is
/// current, and results that find none wait in the journal.
#[derive(Debug, Default)]
pub struct Outbox(Mutex<Option<mpsc::Sender<AgentMessage>>>);

impl Outbox {
    pub fn attach(&self, sender: mpsc::Sender<AgentMessage>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    }

    pub fn detach(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Queues a message for the current session; false if there is none or
    /// it is not keeping up.
    pub fn send(&self, message: AgentMessage) -> bool {
        let sender = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sender.is_some_and(|sender| sender.try_send(message).is_ok())
    }

    pub fn send_result(&self, result: CommandResult) -> bool {
        self.send(AgentMessage {
            body: Some(agent_message::Body::Result(result)),
        })
    }
}

/// Reports a running command's steps to the coordinator.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    command_id: String,
    outbox: Arc<Outbox>,
}

impl ProgressSink {
    pub fn new(command_id: String, outbox: Arc<Outbox>) -> Self {
        ProgressSink { command_id, outbox }
    }

    /// A sink that goes nowhere (for `k3sfleet-agent check` and tests).
    pub fn discard() -> Self {
        ProgressSink::new(String::new(), Arc::new(Outbox::default()))
    }

    pub fn step(&self, step: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(command = self.command_id, step, "{message}");
        self.outbox.send(AgentMessage {
            body: Some(agent_message::Body::Progress(CommandProgress {
                command_id: self.command_id.clone(),
                step: step.to_string(),
                message,
            })),
        });
    }
}
