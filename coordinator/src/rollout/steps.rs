//! What each step of a node's upgrade does. Every step can run again after a
//! crash without harm: observations are re-read, cordons and uncordons are
//! idempotent, and agent commands carry ids the agent runs at most once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k3sfleet_proto::v1::{
    Command, CommandOutcome, CommandResult, Connectivity, DrainOutcome, EtcdSnapshot, Health,
    InstallK3s, NodeRole, RollbackK3s, command, command_event, command_result, drain_event,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::cluster::{ClusterError, DrainRequest, NodeState};
use super::engine::RolloutEngine;
use super::state::{Phase, Step};
use super::worker::node_mut;
use crate::clock::unix_ms;
use crate::store::{NodeProgress, RolloutRecord};

/// A settling node as last seen.
#[derive(Debug, Default)]
struct SettleHealth {
    unhealthy: Vec<String>,
    unseen: Vec<String>,
}

/// How often steps that wait look again.
const POLL: Duration = Duration::from_millis(500);
/// Defaults when the rollout's options leave them at zero.
const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);
/// Time for the download on top of the agent's health timeout.
const INSTALL_MARGIN: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Worth retrying after a pause (an API call failed).
    #[error("{0}")]
    Transient(String),
    /// The node cannot go on without the operator.
    #[error("{0}")]
    Fatal(String),
    /// The rollout is being aborted; the node stops here.
    #[error("aborted")]
    Aborted,
}

/// What a step learned, saved with the move to the next step.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub waits: Vec<(String, u64)>,
    pub snapshot: Option<String>,
    pub was_unschedulable: Option<bool>,
}

fn seconds_or(seconds: u32, default: Duration) -> Duration {
    if seconds == 0 {
        default
    } else {
        Duration::from_secs(u64::from(seconds))
    }
}

impl RolloutEngine {
    /// Runs the node's current step; `retry` counts this process's transient
    /// retries of it, so a retried command gets an id of its own.
    pub(super) async fn run_step(
        self: &Arc<Self>,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        retry: u32,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        match node.step {
            Step::PreCheck => self.pre_check(node, shutdown).await,
            Step::Snapshot => self.snapshot(rollout, node, retry, shutdown).await,
            Step::Cordon => self.cordon(node).await,
            Step::Drain => self.drain(rollout, node, shutdown).await,
            Step::Install => self.install(rollout, node, retry, shutdown).await,
            Step::WaitReady => self.wait_ready(rollout, node, shutdown).await,
            Step::Settle => self.settle(rollout, node, shutdown).await,
            Step::Uncordon => self.uncordon(node).await,
            other => Err(StepError::Fatal(format!(
                "{} is not a step to run",
                other.as_str()
            ))),
        }
    }

    /// Agent connected and healthy, node Ready; for a server, every server
    /// Ready and every etcd member healthy before one is touched.
    async fn pre_check(
        &self,
        node: &NodeProgress,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let started = Instant::now();
        loop {
            let mut problems = self.node_problems(&node.node).await;
            if node.server {
                for server in self.server_names() {
                    problems.extend(self.etcd_problems(&server).await);
                    if server != node.node {
                        problems.extend(self.node_problems(&server).await);
                    }
                }
            }
            if problems.is_empty() {
                return Ok(StepOutcome {
                    waits: waited("pre-checks", started),
                    ..Default::default()
                });
            }
            let summary = problems.join("; ");
            if started.elapsed() >= self.settings.pre_check_wait {
                return Err(StepError::Fatal(format!(
                    "pre-checks still failing after {:?}: {summary}",
                    self.settings.pre_check_wait
                )));
            }
            self.set_blocker(&node.node, Some(format!("pre-checks: {summary}")));
            self.pause_or_stop(shutdown).await?;
        }
    }

    /// Why `name` is not fit to be upgraded right now (empty when it is).
    async fn node_problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let now = unix_ms();
        match self.fleet.connectivity_of(name, now) {
            Some(Connectivity::Connected) => {}
            Some(other) => {
                problems.push(format!("agent on {name} is {}", connectivity_word(other)))
            }
            None => problems.push(format!("no agent on {name} ever connected")),
        }
        if let Some(report) = self.fleet.detail(name, now).and_then(|d| d.last_report) {
            for check in report
                .checks
                .iter()
                .filter(|c| c.status == Health::Error as i32)
            {
                problems.push(format!(
                    "{name} check {} is failing: {}",
                    check.id, check.message
                ));
            }
        }
        match self.cluster_node(name).await {
            Some(Ok(Some(state))) if state.ready => {}
            Some(Ok(Some(_))) => problems.push(format!("Kubernetes node {name} is not Ready")),
            Some(Ok(None)) => problems.push(format!("Kubernetes has no node {name}")),
            Some(Err(err)) => problems.push(format!("cannot read node {name}: {err}")),
            None => problems.push("no Kubernetes access".into()),
        }
        problems
    }

    /// The node as Kubernetes has it; `None` without Kubernetes access.
    async fn cluster_node(&self, name: &str) -> Option<Result<Option<NodeState>, ClusterError>> {
        Some(self.cluster.as_ref()?.node(name.to_string()).await)
    }

    /// Servers in the fleet (every one, not only those in this rollout).
    fn server_names(&self) -> Vec<String> {
        self.fleet
            .summaries(unix_ms())
            .into_iter()
            .filter(|s| s.role == NodeRole::Server as i32)
            .map(|s| s.name)
            .collect()
    }

    /// A server's agent must report its etcd member healthy.
    async fn etcd_problems(&self, server: &str) -> Vec<String> {
        let report = self
            .fleet
            .detail(server, unix_ms())
            .and_then(|d| d.last_report);
        let etcd = report
            .as_ref()
            .and_then(|r| r.checks.iter().find(|c| c.id.starts_with("etcd")));
        match etcd {
            Some(check) if check.status == Health::Ok as i32 => Vec::new(),
            Some(check) => vec![format!(
                "etcd member on {server} is not healthy: {}",
                check.message
            )],
            None => vec![format!("{server} reports no etcd health yet")],
        }
    }

    async fn snapshot(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        retry: u32,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let name = format!("k3sfleet-rollout-{}-{}", rollout.id, node.node);
        let command = Command {
            id: command_id(rollout, node, "snapshot", retry),
            action: Some(command::Action::EtcdSnapshot(EtcdSnapshot {
                name: name.clone(),
            })),
        };
        let started = Instant::now();
        let result = self
            .run_command(&node.node, command, Duration::from_secs(600), shutdown)
            .await?;
        let snapshot = match result.detail {
            Some(command_result::Detail::EtcdSnapshot(detail))
                if !detail.snapshot_name.is_empty() =>
            {
                detail.snapshot_name
            }
            _ => name,
        };
        Ok(StepOutcome {
            waits: waited("etcd snapshot", started),
            snapshot: Some(snapshot),
            ..Default::default()
        })
    }

    /// Records whether the node was cordoned already (before touching it),
    /// then cordons it.
    async fn cordon(&self, node: &NodeProgress) -> Result<StepOutcome, StepError> {
        let cluster = self
            .cluster
            .clone()
            .ok_or_else(|| StepError::Fatal("no Kubernetes access".into()))?;
        if node.was_unschedulable.is_none() {
            let state = cluster
                .node(node.node.clone())
                .await
                .map_err(|err| StepError::Transient(err.to_string()))?
                .ok_or_else(|| StepError::Fatal(format!("Kubernetes has no node {}", node.node)))?;
            let name = node.node.clone();
            self.update(|rollout| {
                let n = node_mut(rollout, &name);
                n.was_unschedulable = Some(state.unschedulable);
                n.cordoned_by_us = !state.unschedulable;
                Ok(((), vec![name.clone()]))
            })
            .await
            .map_err(|err| StepError::Transient(err.to_string()))?;
        }
        cluster
            .cordon(node.node.clone())
            .await
            .map_err(|err| StepError::Transient(err.to_string()))?;
        Ok(StepOutcome::default())
    }

    async fn drain(
        self: &Arc<Self>,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let cluster = self
            .cluster
            .clone()
            .ok_or_else(|| StepError::Fatal("no Kubernetes access".into()))?;
        let request = DrainRequest::for_rollout(&rollout.options);
        let (events, mut receiver) = tokio::sync::mpsc::channel(64);
        let cancel = shutdown.child_token();
        let watcher = {
            // Shows what the drain waits on; stops it when the rollout aborts.
            let engine = self.clone();
            let name = node.node.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut changes = engine.subscribe();
                loop {
                    tokio::select! {
                        event = receiver.recv() => match event {
                            Some(event) => engine.show_drain_event(&name, event),
                            None => break,
                        },
                        _ = changes.changed() => {
                            if engine.phase().await == Some(Phase::Aborting) {
                                cancel.cancel();
                            }
                        }
                    }
                }
            })
        };
        let result = cluster
            .drain(node.node.clone(), request, events, cancel.clone())
            .await;
        let _ = watcher.await;
        let result = result.map_err(|err| StepError::Transient(err.to_string()))?;
        if cancel.is_cancelled()
            && !shutdown.is_cancelled()
            && self.phase().await == Some(Phase::Aborting)
        {
            return Err(StepError::Aborted);
        }
        match DrainOutcome::try_from(result.outcome).unwrap_or(DrainOutcome::Unspecified) {
            DrainOutcome::Drained => Ok(StepOutcome {
                waits: result
                    .waits
                    .into_iter()
                    .map(|w| (w.reason, w.millis))
                    .collect(),
                ..Default::default()
            }),
            _ => Err(StepError::Fatal(format!("drain: {}", result.message))),
        }
    }

    fn show_drain_event(&self, node: &str, event: k3sfleet_proto::v1::DrainEvent) {
        let text = match event.event {
            Some(drain_event::Event::Blocked(blocked)) => {
                let pod = blocked
                    .pod
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_default();
                if blocked.pdb.is_empty() {
                    format!("waiting to evict {pod}: {}", blocked.message)
                } else {
                    format!(
                        "waiting on PDB {}: {}/{} healthy (evicting {pod})",
                        blocked.pdb, blocked.current_healthy, blocked.desired_healthy
                    )
                }
            }
            Some(drain_event::Event::Evicting(evicting)) => {
                let pod = evicting
                    .pod
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_default();
                format!("evicting {pod}")
            }
            _ => return,
        };
        self.set_blocker(node, Some(text));
    }

    pub(super) async fn phase(&self) -> Option<Phase> {
        self.active.lock().await.as_ref().map(|r| r.phase)
    }

    async fn install(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        retry: u32,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let health_timeout = seconds_or(
            rollout.options.health_timeout_seconds,
            DEFAULT_HEALTH_TIMEOUT,
        );
        let command = Command {
            id: command_id(rollout, node, "install", retry),
            action: Some(command::Action::InstallK3s(InstallK3s {
                version: rollout.target.clone(),
                source: rollout.options.source.clone(),
                health_timeout_seconds: health_timeout.as_secs() as u32,
            })),
        };
        let started = Instant::now();
        self.run_command(
            &node.node,
            command,
            health_timeout + INSTALL_MARGIN,
            shutdown,
        )
        .await?;
        Ok(StepOutcome {
            waits: waited("install", started),
            ..Default::default()
        })
    }

    /// Ready in Kubernetes with the new kubelet version, and the agent says so too.
    async fn wait_ready(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let timeout = seconds_or(
            rollout.options.health_timeout_seconds,
            DEFAULT_HEALTH_TIMEOUT,
        );
        let started = Instant::now();
        loop {
            let missing = self.upgraded_problems(&node.node, &rollout.target).await;
            if missing.is_empty() {
                return Ok(StepOutcome {
                    waits: waited("node ready", started),
                    ..Default::default()
                });
            }
            if started.elapsed() >= timeout {
                return Err(StepError::Fatal(format!(
                    "not Ready on {} within {timeout:?}: {}",
                    rollout.target,
                    missing.join("; ")
                )));
            }
            self.set_blocker(
                &node.node,
                Some(format!("waiting for {}", missing.join("; "))),
            );
            self.sleep_or_shutdown(shutdown).await?;
        }
    }

    /// What still differs from "upgraded and healthy".
    async fn upgraded_problems(&self, name: &str, target: &str) -> Vec<String> {
        let mut missing = Vec::new();
        match self.cluster_node(name).await {
            Some(Ok(Some(state))) => {
                if !state.ready {
                    missing.push("the node to be Ready".to_string());
                }
                if state.kubelet_version != target {
                    missing.push(format!(
                        "kubelet {target} (it reports {})",
                        state.kubelet_version
                    ));
                }
            }
            Some(Ok(None)) => missing.push(format!("Kubernetes node {name} to exist")),
            Some(Err(err)) => missing.push(format!("the Kubernetes API ({err})")),
            None => missing.push("Kubernetes access".to_string()),
        }
        let now = unix_ms();
        if self.fleet.connectivity_of(name, now) != Some(Connectivity::Connected) {
            missing.push("the agent to reconnect".to_string());
        }
        let reported = self
            .fleet
            .detail(name, now)
            .and_then(|d| d.last_report)
            .and_then(|r| r.k3s)
            .map(|k| k.installed_version)
            .unwrap_or_default();
        if reported != target {
            missing.push(format!(
                "the agent to report {target} (it reports {reported:?})"
            ));
        }
        missing
    }

    /// Healthy for the whole settle period, watched without a gap: while the
    /// node cannot be seen (its agent reconnecting, the API or the alerts
    /// source not answering) the hold starts over rather than failing a node
    /// that may be fine; seen unhealthy, it fails.
    async fn settle(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let settle = seconds_or(rollout.options.settle_seconds, DEFAULT_SETTLE);
        let unseen_limit = seconds_or(
            rollout.options.health_timeout_seconds,
            DEFAULT_HEALTH_TIMEOUT,
        );
        let started = Instant::now();
        // Health seen by another coordinator process does not count: after a
        // restart the hold begins again.
        let mut healthy_since = Instant::now();
        let mut unseen_since: Option<Instant> = None;
        loop {
            let seen = self.settle_health(&node.node, rollout).await;
            if !seen.unhealthy.is_empty() {
                return Err(StepError::Fatal(format!(
                    "unhealthy while settling: {}",
                    seen.unhealthy.join("; ")
                )));
            }
            if seen.unseen.is_empty() {
                unseen_since = None;
                let held = healthy_since.elapsed();
                if held >= settle {
                    return Ok(StepOutcome {
                        waits: waited("settle", started),
                        ..Default::default()
                    });
                }
                self.set_blocker(
                    &node.node,
                    Some(format!(
                        "settling: healthy for {}s of {}s",
                        held.as_secs(),
                        settle.as_secs()
                    )),
                );
            } else {
                healthy_since = Instant::now();
                let unseen_for = unseen_since.get_or_insert_with(Instant::now).elapsed();
                let what = seen.unseen.join("; ");
                if unseen_for >= unseen_limit {
                    return Err(StepError::Fatal(format!(
                        "could not watch the node settle for {unseen_limit:?}: {what}"
                    )));
                }
                self.set_blocker(
                    &node.node,
                    Some(format!("settling held: waiting for {what}")),
                );
            }
            self.sleep_or_shutdown(shutdown).await?;
        }
    }

    /// What settle sees: problems with the node, and what it cannot see.
    async fn settle_health(&self, name: &str, rollout: &RolloutRecord) -> SettleHealth {
        let mut health = SettleHealth::default();
        let now = unix_ms();
        match self.fleet.connectivity_of(name, now) {
            Some(Connectivity::Connected) => {
                let report = self.fleet.detail(name, now).and_then(|d| d.last_report);
                let reported = report
                    .as_ref()
                    .and_then(|r| r.k3s.as_ref())
                    .map(|k| k.installed_version.as_str())
                    .unwrap_or_default();
                if reported != rollout.target {
                    health.unhealthy.push(format!(
                        "the agent reports K3s {reported:?}, not {}",
                        rollout.target
                    ));
                }
                for check in report
                    .iter()
                    .flat_map(|r| &r.checks)
                    .filter(|c| c.status == Health::Error as i32)
                {
                    health.unhealthy.push(format!(
                        "{name} check {} is failing: {}",
                        check.id, check.message
                    ));
                }
            }
            other => health.unseen.push(format!(
                "the agent on {name} (it is {})",
                other.map_or("not connected", connectivity_word)
            )),
        }
        match self.cluster_node(name).await {
            Some(Ok(Some(state))) if !state.ready => health
                .unhealthy
                .push(format!("Kubernetes node {name} is not Ready")),
            Some(Ok(Some(state))) if state.kubelet_version != rollout.target => {
                health.unhealthy.push(format!(
                    "kubelet reports {}, not {}",
                    state.kubelet_version, rollout.target
                ))
            }
            Some(Ok(Some(_))) => {}
            Some(Ok(None)) => health
                .unhealthy
                .push(format!("Kubernetes has no node {name}")),
            Some(Err(err)) => health.unseen.push(format!("the Kubernetes API ({err})")),
            None => health.unhealthy.push("no Kubernetes access".into()),
        }
        if !rollout.options.alerts_url.is_empty() {
            match super::alerts::firing(&rollout.options.alerts_url).await {
                Ok(firing) if firing.is_empty() => {}
                Ok(firing) => health
                    .unhealthy
                    .push(format!("alerts firing: {}", firing.join(", "))),
                Err(err) => health.unseen.push(format!("the alerts source ({err})")),
            }
        }
        health
    }

    async fn uncordon(&self, node: &NodeProgress) -> Result<StepOutcome, StepError> {
        if node.cordoned_by_us {
            let cluster = self
                .cluster
                .clone()
                .ok_or_else(|| StepError::Fatal("no Kubernetes access".into()))?;
            cluster
                .uncordon(node.node.clone())
                .await
                .map_err(|err| StepError::Transient(err.to_string()))?;
        }
        Ok(StepOutcome::default())
    }

    /// Puts the previous K3s back on a node whose upgrade failed after install.
    pub(super) async fn roll_back(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
    ) -> Result<String, String> {
        let command = Command {
            id: format!(
                "rollout-{}-{}-rollback-{}",
                rollout.id, node.node, node.attempt
            ),
            action: Some(command::Action::RollbackK3s(RollbackK3s {})),
        };
        self.run_command(
            &node.node,
            command,
            Duration::from_secs(600),
            &CancellationToken::new(),
        )
        .await
        .map(|result| result.message)
        .map_err(|err| err.to_string())
    }

    /// Sends a command and waits for its result, showing its progress. An
    /// agent that drops away gets the command again when it returns (same id:
    /// it runs once); one that stays away too long fails the step.
    async fn run_command(
        &self,
        node: &str,
        command: Command,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<CommandResult, StepError> {
        let mut events = self
            .fleet
            .send_command(node, command.clone())
            .map_err(|err| StepError::Fatal(err.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut away_since: Option<Instant> = None;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => match event.event {
                        Some(command_event::Event::Progress(progress)) => {
                            self.set_blocker(node, Some(format!("{}: {}", progress.step, progress.message)));
                        }
                        Some(command_event::Event::Result(result)) => {
                            return match CommandOutcome::try_from(result.outcome).unwrap_or(CommandOutcome::Unspecified) {
                                CommandOutcome::Succeeded | CommandOutcome::NoOp => Ok(result),
                                CommandOutcome::Failed if result.retryable => {
                                    Err(StepError::Transient(format!("the agent reports: {}", result.message)))
                                }
                                _ => Err(StepError::Fatal(format!("the agent reports: {}", result.message))),
                            };
                        }
                        None => {}
                    },
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        // Forgotten (a coordinator restart lost it): send it again.
                        events = self
                            .fleet
                            .send_command(node, command.clone())
                            .map_err(|err| StepError::Fatal(err.to_string()))?;
                    }
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let connected = self.fleet.connectivity_of(node, unix_ms()) == Some(Connectivity::Connected);
                    match (connected, away_since) {
                        (true, _) => away_since = None,
                        (false, None) => away_since = Some(Instant::now()),
                        (false, Some(since)) if since.elapsed() > self.settings.agent_wait => {
                            self.fleet.forget_command(node, &command.id);
                            return Err(StepError::Fatal(format!(
                                "the agent was away for over {:?} during {}",
                                self.settings.agent_wait, command.id
                            )));
                        }
                        (false, Some(_)) => self.set_blocker(
                            node,
                            Some("agent disconnected; waiting for it to return (the command will be sent again)".into()),
                        ),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.fleet.forget_command(node, &command.id);
                    return Err(StepError::Fatal(format!("no result for {} within {timeout:?}", command.id)));
                }
                _ = shutdown.cancelled() => return Err(StepError::Transient("shutting down".into())),
            }
        }
    }

    /// Waits one poll interval; a paused rollout keeps waiting, an aborting
    /// one stops the node.
    async fn pause_or_stop(&self, shutdown: &CancellationToken) -> Result<(), StepError> {
        self.sleep_or_shutdown(shutdown).await?;
        match self.phase().await {
            Some(Phase::Aborting) => Err(StepError::Aborted),
            _ => Ok(()),
        }
    }

    async fn sleep_or_shutdown(&self, shutdown: &CancellationToken) -> Result<(), StepError> {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => Ok(()),
            _ = shutdown.cancelled() => Err(StepError::Transient("shutting down".into())),
        }
    }
}

fn waited(reason: &str, since: Instant) -> Vec<(String, u64)> {
    vec![(reason.to_string(), since.elapsed().as_millis() as u64)]
}

/// The same id for the same try, so a restarted coordinator re-sending it
/// gets the agent's earlier result instead of a second run; a retry after a
/// passing failure needs a new one, or it would only replay that failure.
fn command_id(rollout: &RolloutRecord, node: &NodeProgress, what: &str, retry: u32) -> String {
    let id = format!(
        "rollout-{}-{}-{what}-{}",
        rollout.id, node.node, node.attempt
    );
    match retry {
        0 => id,
        retry => format!("{id}.{retry}"),
    }
}

fn connectivity_word(connectivity: Connectivity) -> &'static str {
    match connectivity {
        Connectivity::Connected => "connected",
        Connectivity::Unreachable => "unreachable",
        Connectivity::Disconnected => "disconnected",
        Connectivity::Unspecified => "unknown",
    }
}
