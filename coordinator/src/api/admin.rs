//! AdminService: the operator's view of the fleet and ad-hoc commands.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k3sfleet_proto::v1::admin_service_server::AdminService;
use k3sfleet_proto::v1::{
    self as pb, CommandEvent, Connectivity, GetNodeRequest, ListAuditRequest, ListAuditResponse,
    ListNodesRequest, ListNodesResponse, NodeDetail, RunCommandRequest, command_event,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::clock::unix_ms;
use crate::commands::{describe, new_command_id, outcome_name, validate_command_id};
use crate::fleet::Fleet;
use crate::store::{AuditEvent, Store};

/// How long RunCommand waits for a result unless told otherwise.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

pub type CommandEventStream = Pin<Box<dyn Stream<Item = Result<CommandEvent, Status>> + Send>>;

#[derive(Debug)]
pub struct AdminApi {
    fleet: Arc<Fleet>,
    store: Store,
}

impl AdminApi {
    pub fn new(fleet: Arc<Fleet>, store: Store) -> Self {
        AdminApi { fleet, store }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type RunCommandStream = CommandEventStream;

    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse {
            nodes: self.fleet.summaries(unix_ms()),
        }))
    }

    async fn get_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<NodeDetail>, Status> {
        let name = request.into_inner().name;
        self.fleet
            .detail(&name, unix_ms())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no node named {name:?} has ever connected")))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        let ListAuditRequest { limit, node } = request.into_inner();
        let limit = if limit == 0 { 100 } else { limit.min(10_000) };
        let node = (!node.is_empty()).then_some(node);
        let entries = self
            .store
            .audit_entries(limit, node)
            .await
            .map_err(|err| Status::internal(format!("reading the audit log failed: {err}")))?;
        Ok(Response::new(ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|entry| pb::AuditEntry {
                    id: entry.id,
                    at_unix_ms: entry.at_ms,
                    actor: entry.event.actor,
                    action: entry.event.action,
                    node: entry.event.node.unwrap_or_default(),
                    detail: entry.event.detail,
                })
                .collect(),
        }))
    }

    async fn run_command(
        &self,
        request: Request<RunCommandRequest>,
    ) -> Result<Response<Self::RunCommandStream>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let RunCommandRequest {
            node,
            command,
            timeout_seconds,
        } = request.into_inner();
        let mut command =
            command.ok_or_else(|| Status::invalid_argument("the request carries no command"))?;
        if command.action.is_none() {
            return Err(Status::invalid_argument("the command has no action"));
        }
        if command.id.is_empty() {
            command.id = new_command_id();
        }
        validate_command_id(&command.id).map_err(Status::invalid_argument)?;
        match self.fleet.connectivity_of(&node, unix_ms()) {
            None => {
                return Err(Status::not_found(format!(
                    "no node named {node:?} has ever connected"
                )));
            }
            Some(Connectivity::Disconnected) => {
                return Err(Status::unavailable(format!(
                    "node {node:?} has no agent connected"
                )));
            }
            Some(_) => {}
        }
        let timeout = match timeout_seconds {
            0 => DEFAULT_COMMAND_TIMEOUT,
            seconds => Duration::from_secs(u64::from(seconds)),
        };

        // Persist before acting: the audit entry exists before the agent sees the command.
        self.audit(
            &actor,
            "command.sent",
            &node,
            format!("{} {}", command.id, describe(&command)),
        )
        .await?;
        let command_id = command.id.clone();
        let events = self
            .fleet
            .send_command(&node, command)
            .map_err(|err| Status::not_found(err.to_string()))?;

        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(
            CommandWatch {
                fleet: self.fleet.clone(),
                store: self.store.clone(),
                node,
                command_id,
                timeout,
            }
            .forward(events, sender),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl AdminApi {
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        node: &str,
        detail: String,
    ) -> Result<(), Status> {
        self.store
            .audit(
                AuditEvent {
                    actor: actor.to_string(),
                    action: action.to_string(),
                    node: Some(node.to_string()),
                    detail,
                },
                unix_ms(),
            )
            .await
            .map(|_| ())
            .map_err(|err| Status::internal(format!("writing the audit log failed: {err}")))
    }
}

/// Follows one command for a RunCommand caller.
struct CommandWatch {
    fleet: Arc<Fleet>,
    store: Store,
    node: String,
    command_id: String,
    timeout: Duration,
}

impl CommandWatch {
    async fn forward(
        self,
        mut events: broadcast::Receiver<CommandEvent>,
        sender: mpsc::Sender<Result<CommandEvent, Status>>,
    ) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(event)) => event,
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => {
                    let _ = sender
                        .send(Err(Status::aborted("the command was abandoned")))
                        .await;
                    return;
                }
                Err(_) => {
                    self.fleet.forget_command(&self.node, &self.command_id);
                    let _ = sender.send(Err(self.timed_out())).await;
                    return;
                }
            };
            let finished = match &event.event {
                Some(command_event::Event::Result(result)) => {
                    self.audit_result(result).await;
                    true
                }
                _ => false,
            };
            if sender.send(Ok(event)).await.is_err() || finished {
                return;
            }
        }
    }

    fn timed_out(&self) -> Status {
        Status::deadline_exceeded(format!(
            "no result for command {id} on {node} within {timeout}; it may still finish on the host: \
             run it again with --id {id} to get its result",
            id = self.command_id,
            node = self.node,
            timeout = humantime::format_duration(self.timeout),
        ))
    }

    async fn audit_result(&self, result: &pb::CommandResult) {
        let event = AuditEvent {
            actor: format!("agent:{}", self.node),
            action: "command.finished".into(),
            node: Some(self.node.clone()),
            detail: format!(
                "{} {}: {}",
                self.command_id,
                outcome_name(result.outcome),
                result.message
            ),
        };
        if let Err(err) = self.store.audit(event, unix_ms()).await {
            tracing::error!(error = %err, command = self.command_id, "writing the audit log failed");
        }
    }
}
