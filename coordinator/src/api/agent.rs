//! AgentService: the agents' side of the protocol.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k3sfleet_pki::PeerIdentity;
use k3sfleet_proto::v1::agent_service_server::AgentService;
use k3sfleet_proto::v1::{
    AgentMessage, ArtifactChunk, CoordinatorMessage, FetchArtifactRequest, Hello, NodeRole,
    Welcome, agent_message, coordinator_message,
};
use k3sfleet_proto::{PROTOCOL, ProtocolMismatch, negotiate};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{self, ArtifactError};
use crate::auth;
use crate::clock::unix_ms;
use crate::fleet::{Fleet, SessionTicket};

/// An agent that connects but says nothing is dropped after this long.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued to one agent before it counts as not reading.
const OUTBOUND_QUEUE: usize = 256;

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;
pub type ArtifactStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

#[derive(Debug)]
pub struct AgentApi {
    fleet: Arc<Fleet>,
    artifacts_dir: PathBuf,
}

impl AgentApi {
    pub fn new(fleet: Arc<Fleet>, artifacts_dir: PathBuf) -> Self {
        AgentApi {
            fleet,
            artifacts_dir,
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = SessionStream;
    type FetchArtifactStream = ArtifactStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = auth::peer(&request)?.clone();
        let mut inbound = request.into_inner();
        let hello = receive_hello(&mut inbound).await?;
        let protocol = check_hello(&peer, &hello)?;

        let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        outbound
            .send(Ok(Box::new(CoordinatorMessage {
                body: Some(coordinator_message::Body::Welcome(Welcome {
                    protocol_version: protocol,
                    coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
                })),
            })))
            .await
            .map_err(|_| Status::internal("session closed before the welcome"))?;
        let silence_limit =
            crate::fleet::silence_limit(Duration::from_millis(u64::from(hello.report_interval_ms)));
        let ticket = self
            .fleet
            .connect(
                hello,
                outbound,
                peer.not_after.saturating_mul(1000),
                peer.k3s_role.map(NodeRole::from),
                unix_ms(),
            )
            .await
            .map_err(|err| Status::internal(format!("cannot record the node: {err}")))?;
        tracing::info!(node = ticket.node, protocol, "agent connected");
        tokio::spawn(read_session(
            self.fleet.clone(),
            ticket,
            inbound,
            silence_limit,
        ));
        let unboxed = ReceiverStream::new(receiver).map(|item| item.map(|m| *m).map_err(|s| *s));
        Ok(Response::new(Box::pin(unboxed)))
    }

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let peer = auth::peer(&request)?.name.clone();
        let FetchArtifactRequest { version, name } = request.into_inner();
        let stream = artifacts::stream(&self.artifacts_dir, &version, &name)
            .await
            .map_err(|err| match err {
                ArtifactError::Invalid { .. } => Status::invalid_argument(err.to_string()),
                ArtifactError::NotFound { .. } => Status::not_found(err.to_string()),
                ArtifactError::Io { .. } => Status::internal(err.to_string()),
            })?;
        tracing::info!(node = peer, version, artifact = name, "streaming artifact");
        Ok(Response::new(Box::pin(stream.map(|chunk| {
            chunk.map_err(|err| Status::internal(format!("reading the artifact failed: {err}")))
        }))))
    }
}

async fn receive_hello(inbound: &mut Streaming<AgentMessage>) -> Result<Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 30s"))??
        .ok_or_else(|| Status::invalid_argument("the stream ended before a hello"))?;
    match first.body {
        Some(agent_message::Body::Hello(hello)) => Ok(hello),
        _ => Err(Status::invalid_argument(
            "the first message of a session must be a hello",
        )),
    }
}

/// Checks a hello against the certificate that sent it; returns the protocol
/// version to speak.
fn check_hello(peer: &PeerIdentity, hello: &Hello) -> Result<u32, Status> {
    if hello.node_name != peer.name {
        return Err(Status::permission_denied(format!(
            "the certificate is for node {:?}; it cannot speak for node {:?}",
            peer.name, hello.node_name
        )));
    }
    if NodeRole::try_from(hello.role).unwrap_or(NodeRole::Unspecified) == NodeRole::Unspecified {
        return Err(Status::invalid_argument(
            "the hello must give the node's role (server or agent)",
        ));
    }
    let peer_range = hello.protocol.unwrap_or_default();
    negotiate(PROTOCOL, peer_range).ok_or_else(|| {
        let mismatch = ProtocolMismatch {
            local_name: "coordinator",
            local_version: env!("CARGO_PKG_VERSION").to_string(),
            local: PROTOCOL,
            peer_name: "agent",
            peer_version: hello.agent_version.clone(),
            peer: peer_range,
        };
        tracing::warn!(node = peer.name, "{mismatch}");
        Status::failed_precondition(mismatch.to_string())
    })
}

/// Reads an agent's messages until its stream ends.
async fn read_session(
    fleet: Arc<Fleet>,
    ticket: SessionTicket,
    mut inbound: Streaming<AgentMessage>,
    silence_limit: Duration,
) {
    loop {
        let Ok(received) = tokio::time::timeout(silence_limit, inbound.message()).await else {
            tracing::info!(
                node = ticket.node,
                silent_for = ?silence_limit,
                "the agent sent nothing for too long; giving its session up"
            );
            break;
        };
        match received {
            Ok(Some(message)) => match message.body {
                Some(agent_message::Body::Report(report)) => {
                    fleet.on_report(&ticket, report, unix_ms())
                }
                Some(agent_message::Body::Progress(progress)) => {
                    fleet.on_progress(&ticket, progress)
                }
                Some(agent_message::Body::Result(result)) => fleet.on_result(&ticket, result),
                Some(agent_message::Body::Hello(_)) => {
                    tracing::warn!(
                        node = ticket.node,
                        "second hello on one session; closing it"
                    );
                    break;
                }
                // A newer agent's message kind this coordinator does not know.
                None => tracing::debug!(node = ticket.node, "ignoring an unknown message"),
            },
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(node = ticket.node, %status, "agent stream failed");
                break;
            }
        }
    }
    fleet.disconnect(&ticket);
    tracing::info!(node = ticket.node, "agent disconnected");
}
