//! The rollout engine: one controller that decides which nodes start, and a
//! worker per node under way that walks it through its steps.
//!
//! All state lives in the store; memory holds a copy. Every change is saved
//! before the action it leads to, under one lock, so the controller, the node
//! workers and operators never write over each other. On start the engine
//! picks up the active rollout where the database says it was.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::{RolloutStatus, UpgradeOptions};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::metrics::RolloutMetrics;
use super::planner::{MaxUnavailable, next_wave};
use super::state::{Control, NodeView, Phase, Refused, Step, apply_control};
use super::window::{self, MaintenanceWindow};
use crate::clock::unix_ms;
use crate::fleet::Fleet;
use crate::store::{AuditEvent, NodeProgress, RolloutRecord, Store, StoreError};

/// Tunables, mostly for tests and the demo; the defaults suit real fleets.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How often the controller looks again without being woken.
    pub tick: Duration,
    /// How long a node waits for its agent to (re)connect before it fails.
    pub agent_wait: Duration,
    /// How long pre-checks may wait for health before the node fails.
    pub pre_check_wait: Duration,
    /// Base of the backoff between retries of a step that failed transiently.
    pub retry_base: Duration,
    /// Transient failures of one step before the node fails.
    pub step_retries: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            tick: Duration::from_secs(1),
            agent_wait: Duration::from_secs(600),
            pre_check_wait: Duration::from_secs(120),
            retry_base: Duration::from_secs(2),
            step_retries: 4,
        }
    }
}

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
}

pub struct RolloutEngine {
    pub(super) store: Store,
    pub(super) fleet: Arc<Fleet>,
    pub(super) cluster: Option<Arc<dyn Cluster>>,
    pub(super) artifacts_dir: PathBuf,
    pub(super) settings: EngineSettings,
    /// The active (unfinished) rollout, if any.
    pub(super) active: Mutex<Option<RolloutRecord>>,
    /// What each node waits on right now; "" holds the rollout's own blocker.
    pub(super) blockers: std::sync::Mutex<BTreeMap<String, String>>,
    pub(super) changes: watch::Sender<u64>,
    pub(super) wake: Notify,
    /// Node workers under way, by node; cancelling a token stops its worker
    /// where it stands (the coordinator is shutting down; the state is saved).
    pub(super) workers: std::sync::Mutex<HashMap<String, CancellationToken>>,
    pub(super) metrics: RolloutMetrics,
}

impl std::fmt::Debug for RolloutEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RolloutEngine")
    }
}

impl RolloutEngine {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        cluster: Option<Arc<dyn Cluster>>,
        artifacts_dir: PathBuf,
        settings: EngineSettings,
    ) -> Arc<Self> {
        Arc::new(RolloutEngine {
            store,
            fleet,
            cluster,
            artifacts_dir,
            settings,
            active: Mutex::new(None),
            blockers: std::sync::Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
            wake: Notify::new(),
            workers: std::sync::Mutex::new(HashMap::new()),
            metrics: RolloutMetrics::default(),
        })
    }

    /// Step durations and drain waits so far, for `/metrics`.
    pub fn metrics(&self) -> &RolloutMetrics {
        &self.metrics
    }

    /// The unfinished rollout, if there is one.
    pub async fn active(&self) -> Option<RolloutRecord> {
        self.active.lock().await.clone()
    }

    /// Moves whenever a rollout changes (for watchers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub(super) fn cluster(&self) -> Result<Arc<dyn Cluster>, RolloutError> {
        self.cluster.clone().ok_or(RolloutError::NoCluster)
    }

    /// Loads the active rollout and runs the controller until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), StoreError> {
        if let Some(rollout) = self.store.latest_rollout().await?
            && !rollout.phase.is_finished()
        {
            tracing::info!(
                rollout = rollout.id,
                phase = rollout.phase.as_str(),
                "resuming the active rollout"
            );
            *self.active.lock().await = Some(rollout);
        }
        loop {
            if let Err(err) = self.control_loop_once().await {
                tracing::error!(error = %err, "the rollout controller failed a step; retrying");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.tick) => {}
                _ = stop.cancelled() => break,
            }
        }
        for token in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            token.cancel();
        }
        Ok(())
    }

    /// Applies `change` to the active rollout and saves it (with the nodes it
    /// names) before anyone acts on it. Returns the saved copy.
    pub(super) async fn update<T>(
        &self,
        change: impl FnOnce(&mut RolloutRecord) -> Result<(T, Vec<String>), RolloutError>,
    ) -> Result<(T, RolloutRecord), RolloutError> {
        let mut active = self.active.lock().await;
        let mut rollout = active.clone().ok_or(RolloutError::NotFound)?;
        let (value, touched) = change(&mut rollout)?;
        rollout.updated_at_ms = unix_ms();
        let nodes: Vec<NodeProgress> = rollout
            .nodes
            .iter()
            .filter(|n| touched.contains(&n.node))
            .cloned()
            .collect();
        self.store.save_rollout(rollout.clone(), nodes).await?;
        *active = if rollout.phase.is_finished() {
            None
        } else {
            Some(rollout.clone())
        };
        drop(active);
        self.changed();
        Ok((value, rollout))
    }

    pub(super) async fn audit(
        &self,
        actor: &str,
        action: &str,
        node: Option<&str>,
        detail: String,
    ) {
        let event = AuditEvent {
            actor: actor.to_string(),
            action: action.to_string(),
            node: node.map(str::to_string),
            detail,
        };
        if let Err(err) = self.store.audit(event, unix_ms()).await {
            tracing::error!(error = %err, action, "writing the audit log failed");
        }
    }

    pub(super) fn set_blocker(&self, key: &str, blocker: Option<String>) {
        let mut blockers = self.blockers.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match blocker {
            Some(text) => blockers.insert(key.to_string(), text.clone()).as_ref() != Some(&text),
            None => blockers.remove(key).is_some(),
        };
        drop(blockers);
        if changed {
            self.changed();
        }
    }

    pub(super) fn blocker(&self, key: &str) -> String {
        self.blockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// One decision of the controller: start nodes, finish, lift cordons.
    async fn control_loop_once(self: &Arc<Self>) -> Result<(), RolloutError> {
        let Some(rollout) = self.active.lock().await.clone() else {
            return Ok(());
        };
        self.ensure_workers(&rollout);
        match rollout.phase {
            Phase::Running => self.advance(&rollout).await,
            Phase::Aborting => self.finish_abort(&rollout).await,
            Phase::Paused | Phase::Aborted | Phase::Completed => Ok(()),
        }
    }

    /// Every node under way has a worker (after a restart, too).
    fn ensure_workers(self: &Arc<Self>, rollout: &RolloutRecord) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|_, token| !token.is_cancelled());
        for node in rollout.nodes.iter().filter(|n| n.step.is_in_flight()) {
            if !workers.contains_key(&node.node) {
                let token = CancellationToken::new();
                workers.insert(node.node.clone(), token.clone());
                tokio::spawn(self.clone().run_node(node.node.clone(), token));
            }
        }
    }

    /// Starts the next server, or the next wave of workers, when nothing is under way.
    async fn advance(self: &Arc<Self>, rollout: &RolloutRecord) -> Result<(), RolloutError> {
        if rollout.nodes.iter().any(|n| n.step.is_in_flight()) {
            return Ok(());
        }
        if rollout.nodes.iter().all(|n| n.step.is_terminal()) {
            return self.complete().await;
        }
        let windows: Vec<MaintenanceWindow> = rollout
            .options
            .windows
            .iter()
            .filter_map(|w| w.parse().ok())
            .collect();
        let now = jiff::Timestamp::now();
        if !window::open(&windows, now) {
            let next = windows.iter().filter_map(|w| w.next_open(now)).min();
            self.set_blocker(
                "",
                Some(match next {
                    Some(at) => format!("outside the maintenance windows; the next opens at {at}"),
                    None => "outside the maintenance windows".to_string(),
                }),
            );
            return Ok(());
        }
        self.set_blocker("", None);

        let pending_server = rollout
            .nodes
            .iter()
            .find(|n| n.server && n.step == Step::Pending);
        let wave: Vec<String> = match pending_server {
            Some(server) => vec![server.node.clone()],
            None => {
                let workers: Vec<String> = rollout
                    .nodes
                    .iter()
                    .filter(|n| !n.server && n.step == Step::Pending)
                    .map(|n| n.node.clone())
                    .collect();
                if workers.is_empty() {
                    return Ok(());
                }
                let pool = rollout.nodes.iter().filter(|n| !n.server).count();
                let max = rollout
                    .options
                    .max_unavailable
                    .parse::<MaxUnavailable>()
                    .map(|m| m.resolve(pool))
                    .unwrap_or(1);
                // Where pods are now: the previous wave moved them.
                let budgets = match self.cluster()?.budgets().await {
                    Ok(budgets) => budgets,
                    Err(err) => {
                        self.set_blocker(
                            "",
                            Some(format!("cannot read the PodDisruptionBudgets: {err}")),
                        );
                        return Ok(());
                    }
                };
                next_wave(&workers, &budgets, max)
            }
        };
        let (_, saved) = self
            .update(|rollout| {
                rollout.waves_started += 1;
                let number = rollout.waves_started;
                for node in rollout.nodes.iter_mut().filter(|n| wave.contains(&n.node)) {
                    node.wave = number;
                    node.step = Step::PreCheck;
                    node.step_started_ms = None;
                    node.attempt += 1;
                    node.started_ms.get_or_insert(unix_ms());
                }
                Ok(((), wave.clone()))
            })
            .await?;
        tracing::info!(rollout = saved.id, wave = saved.waves_started, nodes = ?wave, "starting a wave");
        self.audit(
            "coordinator",
            "rollout.wave_started",
            None,
            format!(
                "rollout {} wave {}: {}",
                saved.id,
                saved.waves_started,
                wave.join(", ")
            ),
        )
        .await;
        self.ensure_workers(&saved);
        Ok(())
    }

    async fn complete(&self) -> Result<(), RolloutError> {
        let (_, saved) = self
            .update(|rollout| {
                rollout.phase = Phase::Completed;
                rollout.finished_at_ms = Some(unix_ms());
                Ok(((), Vec::new()))
            })
            .await?;
        tracing::info!(
            rollout = saved.id,
            target = saved.target,
            "rollout completed"
        );
        self.audit(
            "coordinator",
            "rollout.completed",
            None,
            format!("rollout {} to {}", saved.id, saved.target),
        )
        .await;
        Ok(())
    }

    /// Once nothing is under way: lift k3sfleet's cordons, then mark aborted.
    async fn finish_abort(&self, rollout: &RolloutRecord) -> Result<(), RolloutError> {
        if rollout.nodes.iter().any(|n| n.step.is_in_flight()) {
            return Ok(());
        }
        self.release_cordons(rollout, true).await?;
        let (_, saved) = self
            .update(|rollout| {
                rollout.phase = Phase::Aborted;
                rollout.finished_at_ms = Some(unix_ms());
                let touched = rollout
                    .nodes
                    .iter_mut()
                    .filter(|n| n.step == Step::Pending)
                    .map(|n| {
                        n.step = Step::Aborted;
                        n.node.clone()
                    })
                    .collect();
                Ok(((), touched))
            })
            .await?;
        self.audit(
            "coordinator",
            "rollout.aborted",
            None,
            format!("rollout {}", saved.id),
        )
        .await;
        Ok(())
    }

    /// Uncordons every stopped node k3sfleet cordoned, and records it. Failed
    /// nodes stay cordoned for the operator to look at, unless the rollout is
    /// being aborted.
    pub(super) async fn release_cordons(
        &self,
        rollout: &RolloutRecord,
        include_failed: bool,
    ) -> Result<(), RolloutError> {
        let cluster = self.cluster()?;
        let stopped =
            |n: &&NodeProgress| n.step.is_terminal() && (include_failed || n.step != Step::Failed);
        for node in rollout
            .nodes
            .iter()
            .filter(|n| n.cordoned_by_us)
            .filter(stopped)
        {
            if let Err(err) = cluster.uncordon(node.node.clone()).await {
                self.set_blocker("", Some(format!("cannot uncordon {}: {err}", node.node)));
                return Err(RolloutError::Invalid(format!(
                    "cannot uncordon {}: {err}",
                    node.node
                )));
            }
            let name = node.node.clone();
            self.update(|rollout| {
                if let Some(n) = rollout.nodes.iter_mut().find(|n| n.node == name) {
                    n.cordoned_by_us = false;
                }
                Ok(((), vec![name.clone()]))
            })
            .await?;
            self.audit(
                "coordinator",
                "node.uncordoned",
                Some(&node.node),
                "k3sfleet lifted its own cordon".into(),
            )
            .await;
        }
        Ok(())
    }

    /// An operator's decision.
    pub async fn control(
        &self,
        control: Control,
        actor: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        let (_, saved) = self
            .update(|rollout| {
                let views: Vec<NodeView<'_>> = rollout
                    .nodes
                    .iter()
                    .map(|n| NodeView {
                        name: &n.node,
                        step: n.step,
                        attempt: n.attempt,
                        failure: (!n.failure.is_empty()).then_some(n.failure.as_str()),
                    })
                    .collect();
                let phase = apply_control(rollout.phase, &control, &views)?;
                rollout.phase = phase;
                let mut touched = Vec::new();
                match &control {
                    Control::Pause => rollout.pause_reason = format!("paused by {actor}"),
                    Control::Resume | Control::Abort => rollout.pause_reason.clear(),
                    Control::Retry(name) | Control::Skip(name) => {
                        let node = rollout
                            .nodes
                            .iter_mut()
                            .find(|n| &n.node == name)
                            .expect("checked");
                        node.step = if matches!(control, Control::Retry(_)) {
                            Step::Pending
                        } else {
                            Step::Skipped
                        };
                        node.failure.clear();
                        node.step_started_ms = None;
                        touched.push(name.clone());
                        if phase == Phase::Running {
                            rollout.pause_reason.clear();
                        }
                    }
                }
                Ok(((), touched))
            })
            .await?;
        if let Control::Skip(_) = &control {
            self.release_cordons(&saved, false).await?;
        }
        self.audit(
            actor,
            "rollout.control",
            None,
            format!("rollout {}: {control:?}", saved.id),
        )
        .await;
        self.wake.notify_one();
        Ok(saved)
    }

    /// The newest rollout, or rollout `id`, as the API shows it.
    pub async fn status(&self, id: u64) -> Result<RolloutStatus, RolloutError> {
        let active = self.active.lock().await.clone();
        let rollout = match active {
            Some(rollout) if id == 0 || rollout.id as u64 == id => rollout,
            _ if id == 0 => self
                .store
                .latest_rollout()
                .await?
                .ok_or(RolloutError::NotFound)?,
            _ => self
                .store
                .rollout(id as i64)
                .await?
                .ok_or(RolloutError::NotFound)?,
        };
        Ok(super::status::to_proto(&rollout, self))
    }

    /// Records a new rollout and wakes the controller.
    pub async fn start(
        &self,
        options: UpgradeOptions,
        nodes: Vec<NodeProgress>,
        actor: &str,
    ) -> Result<RolloutRecord, RolloutError> {
        self.cluster()?;
        let mut active = self.active.lock().await;
        if let Some(current) = active.as_ref() {
            return Err(RolloutError::Refused(Refused(format!(
                "rollout {} to {} is {}; finish or abort it first",
                current.id,
                current.target,
                current.phase.as_str()
            ))));
        }
        let now = unix_ms();
        let rollout = self
            .store
            .create_rollout(RolloutRecord {
                id: 0,
                target: options.target_version.clone(),
                phase: Phase::Running,
                pause_reason: String::new(),
                options,
                created_at_ms: now,
                updated_at_ms: now,
                finished_at_ms: None,
                created_by: actor.to_string(),
                waves_started: 0,
                nodes,
            })
            .await?;
        *active = Some(rollout.clone());
        drop(active);
        self.blockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
        self.changed();
        self.wake.notify_one();
        Ok(rollout)
    }
}
