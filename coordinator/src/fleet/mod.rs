//! The live fleet: every known node, its agent's session if connected, what it
//! last reported, and the commands in flight to it.
//!
//! The registry lives in memory and in the store. Hellos are saved at once;
//! reports are observations and are saved in batches by [`Fleet::flush_reports`].
//! Commands waiting for a result survive an agent's reconnect: they are sent
//! again, under the same id, to the new session, and the agent's journal makes
//! sure each runs at most once.

mod liveness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use k3sfleet_pki::K3sRole;
use k3sfleet_proto::v1::{
    Command, CommandEvent, CommandProgress, CommandResult, Connectivity, CoordinatorMessage,
    HealthReport, Hello, NodeDetail, NodeRole, NodeSummary, command_event, coordinator_message,
};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::store::{HelloLog, Store, StoreError};

pub use liveness::{MISSED_REPORTS_UNREACHABLE, connectivity, silence_limit};

/// One message to an agent, or the status that ends its stream. Boxed: a
/// session's queue allocates its slots 32 at a time, used or not, and an
/// unboxed slot is 140 bytes (4.5 KiB per connected agent).
pub type Outgoing = Result<Box<CoordinatorMessage>, Box<Status>>;
/// Messages to one agent.
pub type Outbound = mpsc::Sender<Outgoing>;

/// Boot ids remembered per node, to notice one coming back.
const BOOT_IDS_KEPT: usize = 8;

/// How many command events a slow watcher may fall behind before it misses some.
const COMMAND_EVENT_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no node named {node:?} has ever connected")]
    UnknownNode { node: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Identifies one session of one node; stale sessions cannot touch the node
/// once a newer one has replaced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTicket {
    pub node: String,
    pub id: u64,
}

pub struct Fleet {
    store: Store,
    hellos: HelloLog,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, LiveNode>,
    /// Nodes whose newest report is not in the store yet (the report itself
    /// is their `LiveNode::report`, copied only when it is saved).
    unsaved_reports: HashSet<String>,
}

struct LiveNode {
    role: i32,
    /// Whether `role` comes from the certificate rather than the hello.
    role_bound: bool,
    /// Boot ids this node's hellos carried, newest last (in memory only).
    boot_ids: std::collections::VecDeque<String>,
    /// What the latest hello disagreed with, if anything.
    identity_warning: Option<String>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    hello: Option<Hello>,
    report: Option<HealthReport>,
    report_ms: Option<i64>,
    session: Option<Session>,
    pending: HashMap<String, PendingCommand>,
}

struct Session {
    id: u64,
    outbound: Outbound,
    report_interval_ms: i64,
    /// When the certificate that opened the session expires.
    cert_not_after_ms: i64,
}

struct PendingCommand {
    command: Command,
    events: broadcast::Sender<CommandEvent>,
}

impl Fleet {
    /// Loads the registry from the store.
    pub async fn load(store: Store) -> Result<Arc<Fleet>, FleetError> {
        let mut state = State::default();
        for record in store.load_nodes().await? {
            state.nodes.insert(
                record.name.clone(),
                LiveNode {
                    last_seen_ms: record.last_seen_ms,
                    hello: record.last_hello,
                    report: record.last_report,
                    report_ms: record.last_report_ms,
                    ..LiveNode::new(record.role, record.first_seen_ms)
                },
            );
        }
        Ok(Arc::new(Fleet {
            hellos: store.hello_log(),
            store,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
            next_session: AtomicU64::new(1),
        }))
    }

    /// A counter that moves whenever anything about the fleet changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new session for the node named in `hello` (already checked
    /// against the certificate), replacing any older session of that node,
    /// and re-sends the commands still waiting for a result. The node's role
    /// is `bound_role`, the certificate's, when it has one; a hello that
    /// disagrees with it, or whose boot id came back after another, is
    /// flagged on the node and in the audit log.
    pub async fn connect(
        &self,
        hello: Hello,
        outbound: Outbound,
        cert_not_after_ms: i64,
        bound_role: Option<NodeRole>,
        now_ms: i64,
    ) -> Result<SessionTicket, FleetError> {
        self.hellos.record(hello.clone(), now_ms).await?;
        let ticket = SessionTicket {
            node: hello.node_name.clone(),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
        };
        let warning = {
            let mut state = self.lock();
            let node = state
                .nodes
                .entry(hello.node_name.clone())
                .or_insert_with(|| LiveNode::new(hello.role, now_ms));
            let problems = identity_problems(node, &hello, bound_role);
            node.role = bound_role.map_or(hello.role, |role| role as i32);
            node.role_bound = bound_role.is_some();
            node.identity_warning = (!problems.is_empty()).then(|| problems.join("; "));
            if node.boot_ids.back() != Some(&hello.boot_id) {
                node.boot_ids.retain(|id| *id != hello.boot_id);
                node.boot_ids.push_back(hello.boot_id.clone());
                if node.boot_ids.len() > BOOT_IDS_KEPT {
                    node.boot_ids.pop_front();
                }
            }
            node.last_seen_ms = now_ms;
            let session = Session {
                id: ticket.id,
                outbound,
                report_interval_ms: i64::from(hello.report_interval_ms.max(1)),
                cert_not_after_ms,
            };
            node.hello = Some(hello);
            if let Some(old) = node.session.replace(session) {
                let _ = old.outbound.try_send(Err(Box::new(Status::aborted(
                    "replaced by a newer session of the same node",
                ))));
            }
            let commands: Vec<Command> = node.pending.values().map(|p| p.command.clone()).collect();
            for command in &commands {
                offer(node, command);
            }
            node.identity_warning.clone()
        };
        self.changed();
        if let Some(warning) = warning {
            tracing::warn!(
                node = ticket.node,
                warning,
                "a hello disagrees with what the coordinator knows"
            );
            self.store
                .audit(
                    crate::store::AuditEvent {
                        actor: format!("agent:{}", ticket.node),
                        action: "hello.identity_conflict".into(),
                        node: Some(ticket.node.clone()),
                        detail: warning,
                    },
                    now_ms,
                )
                .await?;
        }
        Ok(ticket)
    }

    /// Forgets the session, unless a newer one replaced it already.
    pub fn disconnect(&self, ticket: &SessionTicket) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.get_mut(&ticket.node)
            && node.session.as_ref().is_some_and(|s| s.id == ticket.id)
        {
            node.session = None;
            drop(state);
            self.changed();
        }
    }

    /// Ends a node's session at once with `status` (for revocation).
    pub fn close_session(&self, node: &str, status: Status) -> bool {
        let mut state = self.lock();
        let closed = match state.nodes.get_mut(node).and_then(|n| n.session.take()) {
            Some(session) => {
                let _ = session.outbound.try_send(Err(Box::new(status)));
                true
            }
            None => false,
        };
        drop(state);
        if closed {
            self.changed();
        }
        closed
    }

    /// Ends the sessions whose certificate has expired; returns their nodes.
    pub fn close_expired_sessions(&self, now_ms: i64) -> Vec<String> {
        let mut state = self.lock();
        let mut closed = Vec::new();
        for (name, node) in state.nodes.iter_mut() {
            if node
                .session
                .as_ref()
                .is_some_and(|s| s.cert_not_after_ms <= now_ms)
            {
                let session = node.session.take().expect("checked");
                let _ = session
                    .outbound
                    .try_send(Err(Box::new(Status::unauthenticated(
                        "the session's certificate has expired",
                    ))));
                closed.push(name.clone());
            }
        }
        drop(state);
        if !closed.is_empty() {
            self.changed();
        }
        closed
    }

    /// Ends every session (at shutdown); agents reconnect on their own.
    pub fn close_all_sessions(&self, status: Status) {
        let mut state = self.lock();
        for node in state.nodes.values_mut() {
            if let Some(session) = node.session.take() {
                let _ = session.outbound.try_send(Err(Box::new(status.clone())));
            }
        }
        drop(state);
        self.changed();
    }

    pub fn on_report(&self, ticket: &SessionTicket, report: HealthReport, now_ms: i64) {
        let mut state = self.lock();
        let State {
            nodes,
            unsaved_reports,
        } = &mut *state;
        let Some(node) = current_node(nodes, ticket) else {
            return;
        };
        node.last_seen_ms = now_ms;
        node.report_ms = Some(now_ms);
        node.report = Some(report);
        unsaved_reports.insert(ticket.node.clone());
        drop(state);
        self.changed();
    }

    pub fn on_progress(&self, ticket: &SessionTicket, progress: CommandProgress) {
        let state = self.lock();
        if let Some(pending) = state
            .nodes
            .get(&ticket.node)
            .and_then(|node| node.pending.get(&progress.command_id))
        {
            let _ = pending.events.send(CommandEvent {
                event: Some(command_event::Event::Progress(progress)),
            });
        }
    }

    /// Delivers a result to whoever waits for it. Results for commands this
    /// node was never sent are ignored: a node can only answer its own.
    pub fn on_result(&self, ticket: &SessionTicket, result: CommandResult) {
        let mut state = self.lock();
        let pending = state
            .nodes
            .get_mut(&ticket.node)
            .and_then(|node| node.pending.remove(&result.command_id));
        drop(state);
        match pending {
            Some(pending) => {
                let _ = pending.events.send(CommandEvent {
                    event: Some(command_event::Event::Result(result)),
                });
                self.changed();
            }
            None => tracing::debug!(
                node = ticket.node,
                command = result.command_id,
                "result for a command nobody waits for"
            ),
        }
    }

    /// Sends `command` to `node` (now if connected, else when it connects)
    /// and returns its events. Sending an id that is already in flight joins
    /// it instead of sending it twice.
    pub fn send_command(
        &self,
        node: &str,
        command: Command,
    ) -> Result<broadcast::Receiver<CommandEvent>, FleetError> {
        let mut state = self.lock();
        let live = state
            .nodes
            .get_mut(node)
            .ok_or_else(|| FleetError::UnknownNode {
                node: node.to_string(),
            })?;
        if let Some(pending) = live.pending.get(&command.id) {
            return Ok(pending.events.subscribe());
        }
        let (events, receiver) = broadcast::channel(COMMAND_EVENT_BUFFER);
        offer(live, &command);
        live.pending
            .insert(command.id.clone(), PendingCommand { command, events });
        Ok(receiver)
    }

    /// Stops waiting for a command (its caller gave up).
    pub fn forget_command(&self, node: &str, command_id: &str) {
        if let Some(live) = self.lock().nodes.get_mut(node) {
            live.pending.remove(command_id);
        }
    }

    pub fn connectivity_of(&self, node: &str, now_ms: i64) -> Option<Connectivity> {
        self.lock().nodes.get(node).map(|n| n.connectivity(now_ms))
    }

    pub fn summaries(&self, now_ms: i64) -> Vec<NodeSummary> {
        self.lock()
            .nodes
            .iter()
            .map(|(name, node)| node.summary(name, now_ms))
            .collect()
    }

    pub fn detail(&self, name: &str, now_ms: i64) -> Option<NodeDetail> {
        self.lock().nodes.get(name).map(|node| NodeDetail {
            summary: Some(node.summary(name, now_ms)),
            last_hello: node.hello.clone(),
            last_report: node.report.clone(),
        })
    }

    /// When each open session's certificate expires, by node.
    pub fn session_cert_expiries(&self) -> Vec<(String, i64)> {
        self.lock()
            .nodes
            .iter()
            .filter_map(|(name, node)| {
                Some((name.clone(), node.session.as_ref()?.cert_not_after_ms))
            })
            .collect()
    }

    /// How many agents hold a session right now.
    pub fn connected_count(&self) -> usize {
        self.lock()
            .nodes
            .values()
            .filter(|n| n.session.is_some())
            .count()
    }

    /// Saves the reports received since the last flush, in one transaction.
    pub async fn flush_reports(&self) -> Result<usize, StoreError> {
        let batch = self.take_unsaved();
        let count = batch.len();
        let nodes: Vec<String> = batch.iter().map(|(node, _, _)| node.clone()).collect();
        if let Err(err) = self.store.record_reports(batch).await {
            self.return_unsaved(nodes);
            return Err(err);
        }
        Ok(count)
    }

    /// As [`Fleet::flush_reports`], for shutdown outside the runtime.
    pub fn flush_reports_blocking(&self) -> Result<usize, StoreError> {
        let batch = self.take_unsaved();
        self.store.record_reports_blocking(&batch)?;
        Ok(batch.len())
    }

    fn take_unsaved(&self) -> Vec<(String, HealthReport, i64)> {
        let mut state = self.lock();
        let State {
            nodes,
            unsaved_reports,
        } = &mut *state;
        unsaved_reports
            .drain()
            .filter_map(|name| {
                let node = nodes.get(&name)?;
                Some((name, node.report.clone()?, node.report_ms?))
            })
            .collect()
    }

    /// Marks a batch that could not be saved as unsaved again (what is saved
    /// next time is each node's newest report, which may be newer).
    fn return_unsaved(&self, nodes: Vec<String>) {
        self.lock().unsaved_reports.extend(nodes);
    }
}

fn current_node<'a>(
    nodes: &'a mut BTreeMap<String, LiveNode>,
    ticket: &SessionTicket,
) -> Option<&'a mut LiveNode> {
    nodes
        .get_mut(&ticket.node)
        .filter(|node| node.session.as_ref().is_some_and(|s| s.id == ticket.id))
}

/// Queues `command` on the node's session. A session whose queue is full
/// is not reading: it is ended, so the agent reconnects and is sent every
/// command still waiting (a command is never silently dropped).
fn offer(node: &mut LiveNode, command: &Command) {
    let Some(session) = &node.session else {
        return;
    };
    match session
        .outbound
        .try_send(Ok(Box::new(command_message(command))))
    {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                command = command.id,
                "the agent's session is not reading; ending it so the agent reconnects"
            );
            node.session = None;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => node.session = None,
    }
}

fn command_message(command: &Command) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(coordinator_message::Body::Command(command.clone())),
    }
}

impl LiveNode {
    /// A node first seen at `first_seen_ms`, with nothing heard from it yet.
    fn new(role: i32, first_seen_ms: i64) -> LiveNode {
        LiveNode {
            role,
            role_bound: false,
            boot_ids: Default::default(),
            identity_warning: None,
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            hello: None,
            report: None,
            report_ms: None,
            session: None,
            pending: HashMap::new(),
        }
    }

    fn last_heard_ms(&self) -> i64 {
        self.report_ms.unwrap_or(0).max(self.last_seen_ms)
    }

    fn connectivity(&self, now_ms: i64) -> Connectivity {
        let interval = self.session.as_ref().map_or(1, |s| s.report_interval_ms);
        connectivity(
            self.session.is_some(),
            self.last_heard_ms(),
            interval,
            now_ms,
        )
    }

    fn summary(&self, name: &str, now_ms: i64) -> NodeSummary {
        let identity_warning = self.identity_warning.clone().unwrap_or_default();
        let hello = self.hello.as_ref();
        NodeSummary {
            name: name.to_string(),
            role: self.role,
            connectivity: self.connectivity(now_ms) as i32,
            last_report_unix_ms: self.report_ms.unwrap_or(0),
            k3s_version: self
                .report
                .as_ref()
                .and_then(|r| r.k3s.as_ref())
                .map(|k| k.installed_version.clone())
                .or_else(|| hello.map(|h| h.k3s_version.clone()))
                .unwrap_or_default(),
            health: self.report.as_ref().map_or(0, |r| r.overall),
            agent_version: hello.map(|h| h.agent_version.clone()).unwrap_or_default(),
            first_seen_unix_ms: self.first_seen_ms,
            last_seen_unix_ms: self.last_seen_ms,
            last_report_age_ms: self
                .report_ms
                .map_or(-1, |at| now_ms.saturating_sub(at).max(0)),
            role_bound: self.role_bound,
            identity_warning,
        }
    }
}

/// What `hello` says that disagrees with what the coordinator knows of `node`.
fn identity_problems(node: &LiveNode, hello: &Hello, bound_role: Option<NodeRole>) -> Vec<String> {
    let mut problems = Vec::new();
    let declared = NodeRole::try_from(hello.role).unwrap_or(NodeRole::Unspecified);
    if let Some(bound) = bound_role
        && bound != declared
    {
        problems.push(format!(
            "its hello says it is a K3s {} but its certificate is bound to {}; the certificate counts",
            role_word(declared as i32),
            role_word(bound as i32)
        ));
    }
    let returned = node.boot_ids.back() != Some(&hello.boot_id)
        && node.boot_ids.iter().any(|id| *id == hello.boot_id);
    if returned {
        problems.push(format!(
            "boot id {} came back after a later one: two hosts may be using this node's certificate",
            hello.boot_id
        ));
    }
    problems
}

fn role_word(role: i32) -> &'static str {
    K3sRole::from_proto(role).map_or("(unspecified)", K3sRole::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            node_name: name.into(),
            role: NodeRole::Agent as i32,
            report_interval_ms: 1000,
            ..Default::default()
        }
    }

    fn command(id: &str) -> Command {
        Command {
            id: id.into(),
            action: None,
        }
    }

    #[tokio::test]
    async fn a_session_that_stops_reading_is_ended_and_its_commands_go_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::load(Store::open(dir.path()).unwrap()).await.unwrap();
        let now = 1_000;
        let (stuck, mut stuck_rx) = mpsc::channel(1);
        fleet
            .connect(hello("worker-1"), stuck, i64::MAX, None, now)
            .await
            .unwrap();
        let _first = fleet.send_command("worker-1", command("c1")).unwrap();
        // The queue holds one message: the second finds it full.
        let _second = fleet.send_command("worker-1", command("c2")).unwrap();
        assert_eq!(
            fleet.connectivity_of("worker-1", now),
            Some(Connectivity::Disconnected),
            "a session that does not read is ended, not fed into the void"
        );
        assert!(stuck_rx.recv().await.is_some());

        let (fresh, mut fresh_rx) = mpsc::channel(16);
        fleet
            .connect(hello("worker-1"), fresh, i64::MAX, None, now)
            .await
            .unwrap();
        let mut resent = Vec::new();
        while let Ok(Ok(message)) = fresh_rx.try_recv() {
            if let Some(coordinator_message::Body::Command(c)) = message.body {
                resent.push(c.id);
            }
        }
        resent.sort();
        assert_eq!(
            resent,
            ["c1", "c2"],
            "every command still waiting goes again"
        );
    }

    #[tokio::test]
    async fn the_certificates_role_counts_and_hellos_that_disagree_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::load(Store::open(dir.path()).unwrap()).await.unwrap();
        let summary = |fleet: &Fleet| fleet.summaries(1_000).remove(0);
        let connect = |boot: &'static str, role: NodeRole| {
            let fleet = &fleet;
            async move {
                let (tx, _rx) = mpsc::channel(16);
                let hello = Hello {
                    boot_id: boot.into(),
                    role: role as i32,
                    ..hello("worker-1")
                };
                fleet
                    .connect(hello, tx, i64::MAX, Some(NodeRole::Agent), 1_000)
                    .await
                    .unwrap();
            }
        };

        connect("b1", NodeRole::Server).await;
        let node = summary(&fleet);
        assert_eq!(node.role, NodeRole::Agent as i32, "the certificate counts");
        assert!(node.role_bound);
        assert!(
            node.identity_warning
                .contains("says it is a K3s server but its certificate is bound to agent"),
            "{}",
            node.identity_warning
        );

        // An honest hello clears the warning; reconnects and a reboot are
        // fine; a boot id coming back after a later one is two hosts.
        for boot in ["b1", "b1", "b2"] {
            connect(boot, NodeRole::Agent).await;
            assert_eq!(summary(&fleet).identity_warning, "", "{boot}");
        }
        connect("b1", NodeRole::Agent).await;
        assert!(
            summary(&fleet)
                .identity_warning
                .contains("boot id b1 came back after a later one"),
            "{}",
            summary(&fleet).identity_warning
        );

        // Without a role in its certificate, the hello's role stands, marked
        // as only said.
        let (tx, _rx) = mpsc::channel(16);
        let hello = Hello {
            role: NodeRole::Server as i32,
            ..hello("server-1")
        };
        fleet
            .connect(hello, tx, i64::MAX, None, 1_000)
            .await
            .unwrap();
        let server = fleet
            .summaries(1_000)
            .into_iter()
            .find(|n| n.name == "server-1")
            .unwrap();
        assert_eq!(server.role, NodeRole::Server as i32);
        assert!(!server.role_bound);
    }
}
