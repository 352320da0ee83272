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
/// current. Progress may be dropped when no session keeps up; results never
/// are: they wait for room on the current session, or for the next one.
#[derive(Debug, Default)]
pub struct Outbox {
    current: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    /// Results that found no session, sent first when one attaches.
    parked: Mutex<Vec<CommandResult>>,
}

impl Outbox {
    fn sender(&self) -> Option<mpsc::Sender<AgentMessage>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `sender` the current session's.
    pub fn attach(&self, sender: mpsc::Sender<AgentMessage>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    }

    /// Sends the current session the results that waited for one.
    pub async fn send_parked(&self) {
        let parked = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|p| p.into_inner()));
        for result in parked {
            self.send_result(result).await;
        }
    }

    pub fn detach(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn park(&self, result: CommandResult) {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(result);
    }

    /// Queues a message for the current session if it has room; false if
    /// there is no session or it is not keeping up (for what may be lost).
    pub fn send(&self, message: AgentMessage) -> bool {
        self.sender()
            .is_some_and(|sender| sender.try_send(message).is_ok())
    }

    /// Delivers a result: waits for room on the current session, or parks it
    /// for the next one. (The coordinator also re-sends every command it
    /// still waits for when a session begins, and the journal answers it.)
    pub async fn send_result(&self, result: CommandResult) {
        match self.sender() {
            Some(sender) => {
                if let Err(returned) = sender.send(result_message(result)).await
                    && let Some(agent_message::Body::Result(result)) = returned.0.body
                {
                    self.park(result);
                }
            }
            None => self.park(result),
        }
    }
}

fn result_message(result: CommandResult) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Result(result)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            ..Default::default()
        }
    }

    fn result_id(message: AgentMessage) -> Option<String> {
        match message.body {
            Some(agent_message::Body::Result(result)) => Some(result.command_id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_result_waits_for_room_instead_of_being_dropped() {
        let outbox = Arc::new(Outbox::default());
        let (sender, mut receiver) = mpsc::channel(1);
        outbox.attach(sender);
        // Progress fills the queue; progress may be lost, a result may not.
        assert!(outbox.send(AgentMessage::default()));
        assert!(!outbox.send(AgentMessage::default()));
        let delivering = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send_result(result("c1")).await }
        });
        tokio::task::yield_now().await;
        assert!(!delivering.is_finished(), "it waits for room");
        assert_eq!(result_id(receiver.recv().await.unwrap()), None);
        delivering.await.unwrap();
        assert_eq!(
            result_id(receiver.recv().await.unwrap()).as_deref(),
            Some("c1")
        );
    }

    #[tokio::test]
    async fn a_result_without_a_session_goes_to_the_next_one() {
        let outbox = Outbox::default();
        outbox.send_result(result("c1")).await;
        let (gone, closed) = mpsc::channel(4);
        drop(closed);
        outbox.attach(gone);
        outbox.send_result(result("c2")).await;
        let (sender, mut receiver) = mpsc::channel(4);
        outbox.attach(sender);
        outbox.send_parked().await;
        let mut ids = vec![
            result_id(receiver.recv().await.unwrap()).unwrap(),
            result_id(receiver.recv().await.unwrap()).unwrap(),
        ];
        ids.sort();
        assert_eq!(ids, ["c1", "c2"]);
    }
}
