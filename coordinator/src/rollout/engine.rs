//! The rollout engine: one task, the only writer of the active rollout.
//!
//! Each round it observes the world, takes in what arrived meanwhile
//! (operators' requests, executors' reports), asks the pure decision what to
//! do ([`super::decide`]), applies that to the record ([`super::transition`]),
//! saves it (one transaction, guarded by the rollout's generation), and only
//! then starts the operations it asked for, each in a task of its own that
//! reports back here ([`super::execute`]). Operators' requests reach the
//! record only through this task, so a decision can never be made on a copy
//! another writer has moved past.
//!
//! On start the engine picks up the active rollout where the database says
//! it was; an operation recorded as sent is sent again under the same try
//! (the same agent command id, the same cordon claim), which is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k3sfleet_proto::v1::{RolloutStatus, UpgradeOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::action::{Action, OpKey, OpResult};
use super::alerts::AlertGate;
use super::cluster::{Cluster, ClusterError};
use super::decide::{decide, on_result, wants_alerts, wants_budgets, wants_longhorn};
use super::execute::Executors;
use super::link::AgentLink;
use super::metrics::RolloutMetrics;
use super::observed::Observed;
use super::settings::EngineSettings;
use super::state::{Control, NodeView, Phase, Refused, Step, apply_control};
use super::store::RolloutStore;
use super::transition::{apply, on_load};
use crate::clock::Clock;
use crate::drain::Claims;
use crate::heartbeat::Heartbeat;
use crate::store::{AuditEvent, NodeProgress, RolloutRecord, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{0}")]
    Invalid(String),
    #[error("no rollout found")]
    NotFound,
    #[error(
        "rollouts need Kubernetes access: set [kubernetes] kubeconfig in the coordinator config"
    )]
    NoCluster,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rollout engine has stopped")]
    Stopped,
}

/// Where firing alerts come from: Prometheus or VictoriaMetrics over HTTP,
/// or a fake in tests.
pub trait AlertSource: Send + Sync + 'static {
    fn firing<'a>(&'a self, gate: &'a AlertGate) -> BoxFuture<'a, Result<Vec<String>, String>>;
}

/// Asks the alerts URL of the rollout's gate.
#[derive(Debug, Default)]
pub struct HttpAlerts;

impl AlertSource for HttpAlerts {
    fn firing<'a>(&'a self, gate: &'a AlertGate) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(gate.firing())
    }
}

/// The active rollout as last saved, and what holds each node up.
#[derive(Debug, Clone)]
pub struct View {
    pub rollout: RolloutRecord,
    /// By node; "" holds the rollout's own blocker.
    pub blockers: BTreeMap<String, String>,
}

/// What the engine is built from.
pub struct Parts {
    pub store: Arc<dyn RolloutStore>,
    pub link: Arc<dyn AgentLink>,
    /// None: the coordinator has no Kubernetes access; rollouts cannot start.
    pub cluster: Option<Arc<dyn Cluster>>,
    pub claims: Arc<Claims>,
    pub clock: Arc<dyn Clock>,
    pub alerts: Arc<dyn AlertSource>,
    pub artifacts_dir: PathBuf,
    pub settings: EngineSettings,
}

/// The handle the API, the metrics and the CLI's views use; [`RolloutEngine::run`]
/// is the writer.
pub struct RolloutEngine {
    pub(super) store: Arc<dyn RolloutStore>,
    pub(super) link: Arc<dyn AgentLink>,
    pub(super) cluster: Option<Arc<dyn Cluster>>,
    pub(super) artifacts_dir: PathBuf,
    claims: Arc<Claims>,
    clock: Arc<dyn Clock>,
    alerts: Arc<dyn AlertSource>,
    settings: EngineSettings,
    metrics: RolloutMetrics,
    requests: mpsc::UnboundedSender<Request>,
    inbox: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    view: watch::Sender<Option<Arc<View>>>,
}

impl std::fmt::Debug for RolloutEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutEngine")
    }
}

enum Request {
    Start {
        options: UpgradeOptions,
        nodes: Vec<NodeProgress>,
        actor: String,
        reply: oneshot::Sender<Result<RolloutRecord, RolloutError>>,
    },
    Control {
        control: Control,
        actor: String,
        expected_generation: u64,
        reply: oneshot::Sender<Result<RolloutRecord, RolloutError>>,
    },
    Done(OpResult),
    Progress(String, String),
}

impl RolloutEngine {
    pub fn new(parts: Parts) -> Arc<Self> {
        let (requests, inbox) = mpsc::unbounded_channel();
        Arc::new(RolloutEngine {
            store: parts.store,
            link: parts.link,
            cluster: parts.cluster,
            artifacts_dir: parts.artifacts_dir,
            claims: parts.claims,
            clock: parts.clock,
            alerts: parts.alerts,
            settings: parts.settings,
            metrics: RolloutMetrics::default(),
            requests,
            inbox: std::sync::Mutex::new(Some(inbox)),
            view: watch::channel(None).0,
        })
    }

    /// Step durations and drain waits so far, for `/metrics`.
    pub fn metrics(&self) -> &RolloutMetrics {
        &self.metrics
    }

    /// The unfinished rollout, if there is one.
    pub fn active(&self) -> Option<Arc<View>> {
        self.view.borrow().clone()
    }

    /// Moves whenever the active rollout or its blockers change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<View>>> {
        self.view.subscribe()
    }

    /// Records a new rollout (the writer refuses while another is active).
    pub async fn start(
        &self,
        options: UpgradeOptions,
        nodes: Vec<NodeProgress>,
        actor: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        if self.cluster.is_none() {
            return Err(RolloutError::NoCluster);
        }
        self.ask(|reply| Request::Start {
            options,
            nodes,
            actor: actor.to_string(),
            reply,
        })
        .await
    }

    /// An operator's decision; `expected_generation` (when not 0) refuses it
    /// if the rollout changed since the operator looked.
    pub async fn control(
        &self,
        control: Control,
        actor: &str,
        expected_generation: u64,
    ) -> Result<RolloutRecord, RolloutError> {
        self.ask(|reply| Request::Control {
            control,
            actor: actor.to_string(),
            expected_generation,
            reply,
        })
        .await
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<RolloutRecord, RolloutError>>) -> Request,
    ) -> Result<RolloutRecord, RolloutError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .map_err(|_| RolloutError::Stopped)?;
        answer.await.map_err(|_| RolloutError::Stopped)?
    }

    /// The newest rollout, or rollout `id`, as the API shows it.
    pub async fn status(&self, id: u64) -> Result<RolloutStatus, RolloutError> {
        let now = self.clock.now_ms();
        if let Some(view) = self.active()
            && (id == 0 || view.rollout.id as u64 == id)
        {
            return Ok(super::view::to_proto(&view.rollout, &view.blockers, now));
        }
        let rollout = self
            .store
            .load(id as i64)
            .await?
            .ok_or(RolloutError::NotFound)?;
        Ok(super::view::to_proto(&rollout, &BTreeMap::new(), now))
    }

    /// Loads the active rollout and drives it until `stop`, beating
    /// `heartbeat` on every turn. Run once.
    pub async fn run(
        self: Arc<Self>,
        stop: CancellationToken,
        heartbeat: Arc<Heartbeat>,
    ) -> Result<(), StoreError> {
        let mut inbox = self
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("the rollout engine runs once");
        let mut writer = Writer::load(self.clone(), stop.clone()).await?;
        let mut agent_changes = self.link.changes();
        let mut last_round: Option<Instant> = None;
        loop {
            heartbeat.beat();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(request) = inbox.recv() => writer.handle(request).await,
                Ok(()) = agent_changes.changed(), if writer.rollout.is_some() => {}
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
            while let Ok(request) = inbox.try_recv() {
                writer.handle(request).await;
            }
            if writer.rollout.is_none() || writer.halted.is_some() {
                continue;
            }
            // Agents' reports wake the engine often; look at most this often.
            if let Some(last) = last_round {
                let wait = self.settings.min_round.saturating_sub(last.elapsed());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            last_round = Some(Instant::now());
            let seen = tokio::select! {
                _ = stop.cancelled() => break,
                seen = writer.observe() => seen,
            };
            // What arrived while we looked counts before we decide.
            while let Ok(request) = inbox.try_recv() {
                writer.handle(request).await;
            }
            writer.round(seen).await;
        }
        writer.stop_operations();
        Ok(())
    }
}

/// An operation under way.
struct Running {
    key: OpKey,
    cancel: CancellationToken,
}

/// The engine's own task: the record, what runs, what holds nodes up.
struct Writer {
    engine: Arc<RolloutEngine>,
    executors: Executors,
    stop: CancellationToken,
    rollout: Option<RolloutRecord>,
    running: BTreeMap<String, Running>,
    decided: BTreeMap<String, String>,
    progress: BTreeMap<String, String>,
    alerts: Option<(Instant, Result<Vec<String>, String>)>,
    /// Set when this process must not write the rollout any more (another
    /// writer moved its generation).
    halted: Option<String>,
}

impl Writer {
    async fn load(
        engine: Arc<RolloutEngine>,
        stop: CancellationToken,
    ) -> Result<Writer, StoreError> {
        let executors = Executors {
            cluster: engine
                .cluster
                .clone()
                .unwrap_or_else(|| Arc::new(NoCluster)),
            link: engine.link.clone(),
            claims: engine.claims.clone(),
        };
        let mut rollout = engine
            .store
            .load(0)
            .await?
            .filter(|r| !r.phase.is_finished());
        if let Some(rollout) = &mut rollout {
            on_load(rollout, engine.clock.now_ms());
            tracing::info!(
                rollout = rollout.id,
                phase = rollout.phase.as_str(),
                "resuming the active rollout"
            );
        }
        let writer = Writer {
            engine,
            executors,
            stop,
            rollout,
            running: BTreeMap::new(),
            decided: BTreeMap::new(),
            progress: BTreeMap::new(),
            alerts: None,
            halted: None,
        };
        writer.published();
        Ok(writer)
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Start {
                options,
                nodes,
                actor,
                reply,
            } => {
                let _ = reply.send(self.start(options, nodes, &actor).await);
            }
            Request::Control {
                control,
                actor,
                expected_generation,
                reply,
            } => {
                let _ = reply.send(self.control(control, &actor, expected_generation).await);
            }
            Request::Done(result) => {
                let node = result.key.node.clone();
                if self
                    .running
                    .get(&node)
                    .is_some_and(|running| running.key == result.key)
                {
                    self.running.remove(&node);
                    self.progress.remove(&node);
                }
                let Some(rollout) = &self.rollout else {
                    return;
                };
                let now = self.engine.clock.now_ms();
                let actions = on_result(rollout, &result, &self.engine.settings, now);
                self.commit(actions).await;
            }
            Request::Progress(node, text) => {
                if self.running.contains_key(&node) {
                    self.progress.insert(node, text);
                    self.published();
                }
            }
        }
    }

    async fn start(
        &mut self,
        options: UpgradeOptions,
        nodes: Vec<NodeProgress>,
        actor: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        if let Some(current) = &self.rollout {
            return Err(RolloutError::Refused(Refused(format!(
                "rollout {} to {} is {}; finish or abort it first",
                current.id,
                current.target,
                current.phase.as_str()
            ))));
        }
        let now = self.engine.clock.now_ms();
        let rollout = self
            .engine
            .store
            .create(RolloutRecord {
                id: 0,
                target: options.target_version.clone(),
                phase: Phase::Running,
                pause_reason: String::new(),
                options,
                created_at_ms: now,
                updated_at_ms: now,
                finished_at_ms: None,
                created_by: actor.to_string(),
                batches_started: 0,
                generation: 0,
                alert_hold_since_ms: None,
                longhorn_hold_since_ms: None,
                nodes,
            })
            .await?;
        self.audit(
            actor,
            "rollout.started",
            None,
            format!(
                "rollout {} to {} on {} nodes",
                rollout.id,
                rollout.target,
                rollout.nodes.len()
            ),
        )
        .await;
        self.decided.clear();
        self.progress.clear();
        self.alerts = None;
        self.rollout = Some(rollout.clone());
        self.published();
        Ok(rollout)
    }

    async fn control(
        &mut self,
        control: Control,
        actor: &str,
        expected_generation: u64,
    ) -> Result<RolloutRecord, RolloutError> {
        let current = self.rollout.clone().ok_or(RolloutError::NotFound)?;
        if let Some(why) = &self.halted {
            return Err(RolloutError::Refused(Refused(why.clone())));
        }
        if expected_generation != 0 && expected_generation != current.generation {
            return Err(RolloutError::Refused(Refused(format!(
                "the rollout changed since you looked (generation {expected_generation}, now {}): \
                 look again and decide on what it is now",
                current.generation
            ))));
        }
        let views: Vec<NodeView<'_>> = current
            .nodes
            .iter()
            .map(|n| NodeView {
                name: &n.node,
                step: n.step,
                attempt: n.attempt,
                failure: (!n.failure.is_empty()).then_some(n.failure.as_str()),
            })
            .collect();
        let phase = apply_control(current.phase, &control, &views)?;
        let mut next = current.clone();
        next.phase = phase;
        let mut touched = Vec::new();
        match &control {
            Control::Pause => next.pause_reason = format!("paused by {actor}"),
            Control::Resume | Control::Abort => next.pause_reason.clear(),
            Control::Retry(name) | Control::Skip(name) => {
                let node = next
                    .nodes
                    .iter_mut()
                    .find(|n| &n.node == name)
                    .expect("apply_control checked the node");
                node.step = match control {
                    Control::Retry(_) => Step::Pending,
                    _ => Step::Skipped,
                };
                node.failure.clear();
                node.dispatched = false;
                node.retries = 0;
                node.retry_at_ms = None;
                node.step_started_ms = Some(self.engine.clock.now_ms());
                touched.push(name.clone());
                if phase == Phase::Running {
                    next.pause_reason.clear();
                }
            }
        }
        if current.phase == Phase::Paused && phase == Phase::Running {
            // The operator has looked: alerts and Longhorn hold afresh, alerts
            // on a fresh answer.
            next.alert_hold_since_ms = None;
            next.longhorn_hold_since_ms = None;
            self.alerts = None;
        }
        let saved = self.save(next, &touched).await?;
        self.audit(
            actor,
            "rollout.control",
            None,
            format!("rollout {}: {control:?}", saved.id),
        )
        .await;
        self.published();
        Ok(saved)
    }

    /// Saves `next` (the rollout's fields and the `touched` nodes) as the
    /// next generation and makes it current.
    async fn save(
        &mut self,
        mut next: RolloutRecord,
        touched: &[String],
    ) -> Result<RolloutRecord, RolloutError> {
        next.generation += 1;
        next.updated_at_ms = self.engine.clock.now_ms();
        let nodes: Vec<NodeProgress> = next
            .nodes
            .iter()
            .filter(|n| touched.contains(&n.node))
            .cloned()
            .collect();
        if let Err(err) = self.engine.store.save(next.clone(), nodes).await {
            if let StoreError::Stale { .. } = err {
                let why = format!("this coordinator stopped driving the rollout: {err}");
                tracing::error!("{why}");
                self.halted = Some(why);
                self.stop_operations();
                self.published();
            }
            return Err(err.into());
        }
        self.engine
            .claims
            .set_active_rollout((!next.phase.is_finished()).then_some(next.id as u64));
        self.rollout = Some(next.clone());
        Ok(next)
    }

    /// What the world looks like now.
    async fn observe(&mut self) -> Observed {
        let engine = self.engine.clone();
        let rollout = self.rollout.as_ref().expect("observed only while active");
        let cluster = &self.executors.cluster;
        let mut seen = Observed::at(engine.clock.now_ms());
        seen.agents = engine.link.agents();
        seen.nodes = cluster
            .nodes()
            .await
            .map(|nodes| nodes.into_iter().map(|n| (n.name.clone(), n)).collect());
        if wants_budgets(rollout) {
            seen.budgets = Some(cluster.budgets().await);
        }
        if wants_longhorn(rollout) {
            seen.longhorn = Some(cluster.longhorn().await);
        }
        if wants_alerts(rollout) {
            seen.alerts = Some(self.alerts_now(rollout.options.clone()).await);
        }
        seen.running = self
            .running
            .iter()
            .map(|(node, running)| (node.clone(), running.key.clone()))
            .collect();
        seen.draining = engine.claims.draining();
        seen
    }

    /// The firing alerts, asked at most every `alerts_poll`.
    async fn alerts_now(&mut self, options: UpgradeOptions) -> Result<Vec<String>, String> {
        if let Some((at, answer)) = &self.alerts
            && at.elapsed() < self.engine.settings.alerts_poll
        {
            return answer.clone();
        }
        let answer = match AlertGate::from_options(&options) {
            Ok(Some(gate)) => self.engine.alerts.firing(&gate).await,
            Ok(None) => Ok(Vec::new()),
            Err(err) => Err(err),
        };
        self.alerts = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn round(&mut self, seen: Observed) {
        let Some(rollout) = &self.rollout else {
            return;
        };
        let decision = decide(rollout, &seen, &self.engine.settings);
        self.decided = decision.blockers;
        self.commit(decision.actions).await;
        self.published();
    }

    /// Applies `actions`, saves, then does what they ask.
    async fn commit(&mut self, actions: Vec<Action>) {
        if actions.is_empty() || self.halted.is_some() {
            return;
        }
        let Some(before) = self.rollout.clone() else {
            return;
        };
        let now = self.engine.clock.now_ms();
        let mut next = before.clone();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for action in &actions {
            touched.extend(apply(&mut next, action, now));
        }
        if next != before {
            let touched: Vec<String> = touched.into_iter().collect();
            if let Err(err) = self.save(next, &touched).await {
                // Nothing is done that was not saved; the next round tries again.
                tracing::error!(error = %err, "saving the rollout failed");
                return;
            }
        }
        for action in &actions {
            self.carry_out(action);
        }
        self.record(&before, &actions, now).await;
        if self.rollout.as_ref().is_some_and(|r| r.phase.is_finished()) {
            self.published();
            self.rollout = None;
            self.running.clear();
            self.decided.clear();
            self.progress.clear();
        }
        self.published();
    }

    fn carry_out(&mut self, action: &Action) {
        match action {
            Action::Run(key) => self.dispatch(key.clone()),
            Action::Stop { node } => {
                if let Some(running) = self.running.remove(node) {
                    running.cancel.cancel();
                    self.progress.remove(node);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, key: OpKey) {
        let Some(rollout) = self.rollout.clone() else {
            return;
        };
        if self.running.contains_key(&key.node) {
            return;
        }
        let Some(node) = rollout.nodes.iter().find(|n| n.node == key.node).cloned() else {
            return;
        };
        let cancel = self.stop.child_token();
        let executors = self.executors.clone();
        let requests = self.engine.requests.clone();
        let (progress, mut lines) = mpsc::channel::<(String, String)>(16);
        {
            let requests = requests.clone();
            tokio::spawn(async move {
                while let Some((node, text)) = lines.recv().await {
                    let _ = requests.send(Request::Progress(node, text));
                }
            });
        }
        tracing::info!(rollout = rollout.id, node = key.node, op = key.op.as_str(), try_ = %key, "starting");
        self.running.insert(
            key.node.clone(),
            Running {
                key: key.clone(),
                cancel: cancel.clone(),
            },
        );
        tokio::spawn(async move {
            // Cancelled (a drain stopped by an abort, the engine stopping):
            // dropped where it stands, as a killed process would leave it;
            // the record says what to do on the next try.
            tokio::select! {
                result = executors.execute(key, &rollout, &node, progress, cancel.clone()) => {
                    let _ = requests.send(Request::Done(result));
                }
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// The audit log, metrics and log lines for what was just saved.
    async fn record(&mut self, before: &RolloutRecord, actions: &[Action], now: i64) {
        let Some(after) = self.rollout.clone() else {
            return;
        };
        let id = after.id;
        for action in actions {
            match action {
                Action::Start { nodes, .. } => {
                    tracing::info!(
                        rollout = id,
                        batch = after.batches_started,
                        ?nodes,
                        "starting a batch"
                    );
                    self.audit(
                        "coordinator",
                        "rollout.batch_started",
                        None,
                        format!(
                            "rollout {id} batch {}: {}",
                            after.batches_started,
                            nodes.join(", ")
                        ),
                    )
                    .await;
                }
                Action::Pass {
                    node,
                    from,
                    outcome,
                } => {
                    let Some(was) = before.nodes.iter().find(|n| &n.node == node) else {
                        continue;
                    };
                    if was.step != *from {
                        continue;
                    }
                    let took = Duration::from_millis(
                        now.saturating_sub(was.step_started_ms.unwrap_or(now))
                            .max(0) as u64,
                    );
                    self.engine
                        .metrics
                        .step_finished(*from, took, &outcome.waits);
                    let mut detail = format!("rollout {id}: {} finished", from.as_str());
                    if let Some(note) = &outcome.note {
                        detail.push_str(&format!("; {note}"));
                    }
                    tracing::info!(rollout = id, node, step = from.as_str(), "node moved on");
                    self.audit(
                        "coordinator",
                        &format!("rollout.{}", from.as_str()),
                        Some(node),
                        detail,
                    )
                    .await;
                    if from.next(was.server) == Step::Done {
                        self.audit(
                            "coordinator",
                            "rollout.node_upgraded",
                            Some(node),
                            format!("rollout {id}: {} -> {}", was.from_version, after.target),
                        )
                        .await;
                    }
                }
                Action::Backoff {
                    node,
                    from,
                    retries,
                    reason,
                    ..
                } => {
                    tracing::warn!(
                        rollout = id,
                        node,
                        step = from.as_str(),
                        retries,
                        reason,
                        "will retry"
                    );
                }
                Action::Fail { node, .. } | Action::RolledBack { node, .. } => {
                    let failure = after
                        .nodes
                        .iter()
                        .find(|n| &n.node == node)
                        .map(|n| n.failure.clone())
                        .unwrap_or_default();
                    tracing::warn!(
                        rollout = id,
                        node,
                        failure,
                        "node failed; the rollout pauses"
                    );
                    self.audit("coordinator", "rollout.node_failed", Some(node), failure)
                        .await;
                }
                Action::Released { node, note } => {
                    self.audit(
                        "coordinator",
                        "rollout.uncordoned",
                        Some(node),
                        format!(
                            "rollout {id}: k3sfleet's cordon lifted{}",
                            note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
                        ),
                    )
                    .await;
                }
                Action::Stop { node } => {
                    self.audit(
                        "coordinator",
                        "rollout.node_stopped",
                        Some(node),
                        format!("rollout {id}: stopped by the abort"),
                    )
                    .await;
                }
                Action::Pause { reason } if before.phase == Phase::Running => {
                    tracing::warn!(rollout = id, reason, "rollout paused");
                    self.audit("coordinator", "rollout.paused", None, reason.clone())
                        .await;
                }
                Action::Complete => {
                    tracing::info!(rollout = id, target = after.target, "rollout completed");
                    self.audit(
                        "coordinator",
                        "rollout.completed",
                        None,
                        format!("rollout {id} to {}", after.target),
                    )
                    .await;
                }
                Action::FinishAbort => {
                    self.audit(
                        "coordinator",
                        "rollout.aborted",
                        None,
                        format!("rollout {id}"),
                    )
                    .await;
                }
                _ => {}
            }
        }
    }

    async fn audit(&self, actor: &str, action: &str, node: Option<&str>, detail: String) {
        let event = AuditEvent {
            actor: actor.to_string(),
            action: action.to_string(),
            node: node.map(str::to_string),
            detail,
        };
        if let Err(err) = self
            .engine
            .store
            .audit(event, self.engine.clock.now_ms())
            .await
        {
            tracing::error!(error = %err, action, "writing the audit log failed");
        }
    }

    /// Publishes the record and blockers for the API and watchers.
    fn published(&self) {
        let view = self.rollout.as_ref().map(|rollout| {
            let mut blockers = self.decided.clone();
            blockers.extend(self.progress.clone());
            if let Some(why) = &self.halted {
                blockers.insert(String::new(), why.clone());
            }
            Arc::new(View {
                rollout: rollout.clone(),
                blockers,
            })
        });
        self.engine.view.send_replace(view);
    }

    fn stop_operations(&mut self) {
        for running in self.running.values() {
            running.cancel.cancel();
        }
        self.running.clear();
    }
}

/// The cluster of a coordinator without Kubernetes access: every call fails
/// for good, saying so.
struct NoCluster;

fn no_cluster<T>() -> Result<T, ClusterError> {
    Err(ClusterError::permanent(
        "no Kubernetes access: set [kubernetes] kubeconfig in the coordinator config",
    ))
}

impl Cluster for NoCluster {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<super::cluster::NodeState>, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn cordon(
        &self,
        _: String,
        _: crate::drain::Owner,
    ) -> BoxFuture<'_, Result<crate::drain::Cordoned, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn uncordon(
        &self,
        _: String,
        _: crate::drain::Owner,
    ) -> BoxFuture<'_, Result<crate::drain::Uncordoned, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn adopt(
        &self,
        _: String,
        _: crate::drain::Claim,
        _: crate::drain::Owner,
    ) -> BoxFuture<'_, Result<crate::drain::Cordoned, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn drain(
        &self,
        _: String,
        _: super::cluster::DrainRequest,
        _: mpsc::Sender<k3sfleet_proto::v1::DrainEvent>,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<k3sfleet_proto::v1::DrainResult, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn drain_refusals(
        &self,
        _: String,
        _: super::cluster::DrainRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn budgets(&self) -> BoxFuture<'_, Result<Vec<super::planner::Budget>, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn longhorn(
        &self,
    ) -> BoxFuture<'_, Result<Option<crate::longhorn::LonghornView>, ClusterError>> {
        Box::pin(async { no_cluster() })
    }
    fn request_longhorn_eviction(
        &self,
        _: String,
        _: bool,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async { no_cluster() })
    }
}
