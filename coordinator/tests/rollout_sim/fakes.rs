//! The engine's seams served by the simulated world: a Kubernetes cluster, the
//! agents, the clock, the alerts source and a store that checks every saved
//! decision. Each call may be struck by a fault; agents run their commands in
//! tasks of their own, so a "killed" coordinator leaves them running.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k3sfleet_coordinator::clock::Clock;
use k3sfleet_coordinator::drain::{Claim, CordonState, Cordoned, Owner, Uncordoned};
use k3sfleet_coordinator::rollout::AlertSource;
use k3sfleet_coordinator::rollout::alerts::AlertGate;
use k3sfleet_coordinator::rollout::cluster::{Cluster, ClusterError, DrainRequest, NodeState};
use k3sfleet_coordinator::rollout::link::{AgentLink, AgentView, LinkError, Presence};
use k3sfleet_coordinator::rollout::planner::Budget;
use k3sfleet_coordinator::rollout::state::Step;
use k3sfleet_coordinator::rollout::store::{MemoryStore, RolloutStore};
use k3sfleet_coordinator::store::{AuditEvent, NodeProgress, RolloutRecord, StoreError};
use k3sfleet_proto::v1::{
    Command, CommandOutcome, CommandResult, DrainEvent, DrainOutcome, DrainResult,
    EtcdSnapshotResult, command, command_result,
};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::world::{Journal, Scripted, World, attempt_of};

pub type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

/// Virtual wall time: the start plus tokio's (paused, auto-advancing) clock.
#[derive(Debug)]
pub struct SimClock {
    pub start_ms: i64,
    pub origin: tokio::time::Instant,
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.origin.elapsed().as_millis() as i64
    }
}

/// Moves the world to now and hands it over.
fn world_now<'a>(world: &'a Shared, clock: &SimClock) -> std::sync::MutexGuard<'a, World> {
    let mut w = lock(world);
    w.advance(clock.now_ms());
    w
}

pub struct FakeCluster {
    pub world: Shared,
    pub clock: Arc<SimClock>,
    pub rollout: u64,
}

/// What a fault does to one call.
enum Strike {
    None,
    Before(ClusterError),
    After,
    Slow(Duration),
}

impl FakeCluster {
    fn strike(&self, call: &str, writes: bool) -> Strike {
        let mut w = lock(&self.world);
        if let Some(Scripted::ErrorAfter) = w.take_scripted(call) {
            return Strike::After;
        }
        let f = w.faults;
        if w.chance(f.api_error) {
            let permanent = w.chance(f.api_permanent);
            return Strike::Before(if permanent {
                ClusterError::permanent("403 Forbidden (injected)")
            } else {
                ClusterError::retryable("503 Service Unavailable (injected)")
            });
        }
        if writes && w.chance(f.api_error_after) {
            return Strike::After;
        }
        if w.chance(f.api_slow) {
            return Strike::Slow(Duration::from_millis(w.rng.random_range(2_000..20_000)));
        }
        Strike::None
    }

    /// Runs a write under a fault: before it, after it took effect, or slow.
    async fn write<T: Clone>(
        &self,
        call: &str,
        what: String,
        apply: impl FnOnce(&mut World) -> T,
    ) -> Result<T, ClusterError> {
        let strike = self.strike(call, true);
        if let Strike::Slow(delay) = strike {
            tokio::time::sleep(delay).await;
        }
        if let Strike::Before(err) = strike {
            return Err(err);
        }
        let value = {
            let mut w = world_now(&self.world, &self.clock);
            let value = apply(&mut w);
            w.check(self.rollout);
            w.maybe_kill();
            value
        };
        if let Strike::After = strike {
            lock(&self.world).note(format!("{what} took effect; its answer is lost"));
            return Err(ClusterError::retryable(format!(
                "{what}: connection reset (injected, after the write)"
            )));
        }
        Ok(value)
    }

    async fn read<T>(
        &self,
        call: &str,
        read: impl FnOnce(&mut World) -> T,
    ) -> Result<T, ClusterError> {
        match self.strike(call, false) {
            Strike::Before(err) => return Err(err),
            Strike::Slow(delay) => tokio::time::sleep(delay).await,
            _ => {}
        }
        let mut w = world_now(&self.world, &self.clock);
        let value = read(&mut w);
        w.maybe_kill();
        Ok(value)
    }
}

fn cordon_in(w: &mut World, name: &str, owner: &Owner) -> Cordoned {
    w.touched(name, "a cordon");
    match w.cordon_state(name) {
        CordonState::Schedulable => {
            let now = w.now;
            let host = w.hosts.get_mut(name).expect("a host");
            host.unschedulable = true;
            host.set_by_operator = false;
            host.claim = Some(Claim {
                owner: owner.clone(),
                at: now.to_string(),
            });
            w.note(format!("{name} cordoned by {owner}"));
            Cordoned::Now
        }
        CordonState::Claimed(claim) if claim.owner == *owner => Cordoned::Already,
        CordonState::Claimed(claim) => Cordoned::ClaimedBy(claim),
        CordonState::Foreign => Cordoned::Foreign,
    }
}

impl Cluster for FakeCluster {
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeState>, ClusterError>> {
        Box::pin(self.read("nodes", |w| {
            let now = w.now;
            w.hosts
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .into_iter()
                .map(|name| {
                    let host = &w.hosts[&name];
                    NodeState {
                        ready: host.up_at <= now,
                        kubelet_version: host.binary.clone(),
                        cordon: w.cordon_state(&name),
                        name,
                    }
                })
                .collect()
        }))
    }

    fn cordon(&self, name: String, owner: Owner) -> BoxFuture<'_, Result<Cordoned, ClusterError>> {
        Box::pin(self.write("cordon", format!("cordoning {name}"), move |w| {
            cordon_in(w, &name, &owner)
        }))
    }

    fn uncordon(
        &self,
        name: String,
        owner: Owner,
    ) -> BoxFuture<'_, Result<Uncordoned, ClusterError>> {
        Box::pin(
            self.write("uncordon", format!("uncordoning {name}"), move |w| match w
                .cordon_state(&name)
            {
                CordonState::Claimed(claim) if claim.owner == owner => {
                    if w.hosts[&name].operator_cordoned {
                        w.violation(format!(
                            "k3sfleet lifted the cordon an operator put on {name}"
                        ));
                    }
                    let host = w.hosts.get_mut(&name).expect("a host");
                    host.unschedulable = false;
                    host.claim = None;
                    w.note(format!("{name} uncordoned by {owner}"));
                    w.replicas_rebuild(&name);
                    Uncordoned::Now
                }
                CordonState::Schedulable => {
                    w.hosts.get_mut(&name).expect("a host").claim = None;
                    Uncordoned::Already
                }
                other => Uncordoned::NotOurs(other),
            }),
        )
    }

    fn adopt(
        &self,
        name: String,
        from: Claim,
        to: Owner,
    ) -> BoxFuture<'_, Result<Cordoned, ClusterError>> {
        Box::pin(
            self.write("adopt", format!("taking over {name}"), move |w| {
                match w.cordon_state(&name) {
                    CordonState::Claimed(claim) if claim == from => {
                        let now = w.now;
                        w.hosts.get_mut(&name).expect("a host").claim = Some(Claim {
                            owner: to.clone(),
                            at: now.to_string(),
                        });
                        Cordoned::Already
                    }
                    CordonState::Claimed(claim) if claim.owner == to => Cordoned::Already,
                    CordonState::Claimed(claim) => Cordoned::ClaimedBy(claim),
                    CordonState::Foreign => Cordoned::Foreign,
                    CordonState::Schedulable => cordon_in(w, &name, &to),
                }
            }),
        )
    }

    /// Evicts the node's pods as the budgets allow, until none is left, the
    /// deadline passes, or the caller gives up.
    fn drain(
        &self,
        name: String,
        request: DrainRequest,
        _events: mpsc::Sender<DrainEvent>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<DrainResult, ClusterError>> {
        Box::pin(async move {
            if let Strike::Before(err) = self.strike("drain", false) {
                return Err(err);
            }
            let started = self.clock.now_ms();
            let deadline = started + request.timeout.as_millis() as i64;
            loop {
                {
                    let mut w = world_now(&self.world, &self.clock);
                    w.touched(&name, "a drain");
                    let on_node: Vec<usize> = (0..w.pods.len())
                        .filter(|&i| w.pods[i].node == name)
                        .collect();
                    if on_node.is_empty() && !w.longhorn_releases(&name) {
                        // Longhorn keeps its instance manager's budget: the
                        // drain waits, as kubectl's would.
                        if w.now >= deadline {
                            return Ok(DrainResult {
                                outcome: DrainOutcome::TimedOut as i32,
                                message: format!("Longhorn keeps {name}'s instance manager"),
                                ..Default::default()
                            });
                        }
                    } else if on_node.is_empty() {
                        w.replicas_down(&name);
                        w.note(format!("{name} drained"));
                        w.maybe_kill();
                        return Ok(DrainResult {
                            outcome: DrainOutcome::Drained as i32,
                            message: format!("drained {name}"),
                            elapsed_ms: (w.now - started) as u64,
                            ..Default::default()
                        });
                    }
                    for i in on_node {
                        if w.pods[i].gone_at.is_none() {
                            w.evict(i);
                        }
                    }
                    if w.now >= deadline {
                        return Ok(DrainResult {
                            outcome: DrainOutcome::TimedOut as i32,
                            message: format!("blocked by a budget on {name}"),
                            ..Default::default()
                        });
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => {
                        return Ok(DrainResult {
                            outcome: DrainOutcome::Failed as i32,
                            message: "cancelled".into(),
                            ..Default::default()
                        });
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    }

    fn drain_refusals(
        &self,
        _name: String,
        _request: DrainRequest,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>> {
        Box::pin(self.read("drain_refusals", |_| Vec::new()))
    }

    fn longhorn(
        &self,
    ) -> BoxFuture<'_, Result<Option<k3sfleet_coordinator::longhorn::LonghornView>, ClusterError>>
    {
        Box::pin(self.read("longhorn", |w| w.longhorn()))
    }

    fn request_longhorn_eviction(
        &self,
        _name: String,
        _requested: bool,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async { Ok(()) })
    }

    fn budgets(&self) -> BoxFuture<'_, Result<Vec<Budget>, ClusterError>> {
        Box::pin(async move {
            while lock(&self.world).hold_budgets {
                lock(&self.world).budgets_waiting = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lock(&self.world).budgets_waiting = false;
            self.read("budgets", |w| {
                let budgets = w.budgets();
                w.last_budgets = budgets.clone();
                budgets
            })
            .await
        })
    }
}

/// The agents: each runs a command once per id (its journal) in a task of
/// its own, and answers a re-sent id from the journal.
pub struct FakeAgents {
    pub world: Shared,
    pub clock: Arc<SimClock>,
    pub agent_wait: Duration,
    pub changes: watch::Sender<u64>,
}

impl FakeAgents {
    fn connected(&self, node: &str) -> bool {
        let w = world_now(&self.world, &self.clock);
        w.hosts.get(node).is_some_and(|h| h.away_until <= w.now)
    }
}

fn outcome(outcome: CommandOutcome, message: &str) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// What an agent does for a command, on its host; the result goes to the journal.
async fn execute(world: Shared, clock: Arc<SimClock>, node: String, command: Command) {
    let id = command.id.clone();
    let attempt = attempt_of(&id);
    let (duration, fails) = {
        let mut w = lock(&world);
        let p = w.faults.agent_fails;
        let fails = w.chance(p);
        (w.rng.random_range(1_000..15_000), fails)
    };
    tokio::time::sleep(Duration::from_millis(duration)).await;
    let mut w = world_now(&world, &clock);
    let now = w.now;
    let restart = now + w.rng.random_range(1_000..6_000);
    let result = match command.action {
        _ if fails => {
            let mut r = outcome(
                CommandOutcome::Failed,
                "the mirror was unreachable (injected)",
            );
            r.retryable = true;
            r
        }
        Some(command::Action::InstallK3s(install)) => {
            w.touched(&node, "an install");
            let host = w.hosts.get_mut(&node).expect("a host");
            if host.binary == install.version {
                outcome(CommandOutcome::NoOp, "installed already")
            } else if host.broken {
                // Swapped, never came up, put back: the host is as it was.
                host.up_at = restart;
                outcome(
                    CommandOutcome::Failed,
                    "k3s did not become active; rolled back",
                )
            } else {
                host.previous = Some(std::mem::replace(&mut host.binary, install.version));
                host.up_at = restart;
                w.succeeded(&node, "install", attempt);
                outcome(CommandOutcome::Succeeded, "installed")
            }
        }
        Some(command::Action::RollbackK3s(rollback)) => {
            w.touched(&node, "a rollback");
            let host = w.hosts.get_mut(&node).expect("a host");
            if host.binary == rollback.version {
                outcome(CommandOutcome::NoOp, "in place already")
            } else if host.previous.as_deref() == Some(rollback.version.as_str()) {
                let previous = host.previous.replace(host.binary.clone()).expect("checked");
                host.binary = previous;
                host.up_at = restart;
                outcome(CommandOutcome::Succeeded, "rolled back")
            } else {
                outcome(CommandOutcome::Failed, "no such binary to roll back to")
            }
        }
        Some(command::Action::EtcdSnapshot(snapshot)) => {
            w.touched(&node, "a snapshot");
            w.succeeded(&node, "snapshot", attempt);
            CommandResult {
                detail: Some(command_result::Detail::EtcdSnapshot(EtcdSnapshotResult {
                    snapshot_name: format!("{}-{node}-{now}", snapshot.name),
                })),
                ..outcome(CommandOutcome::Succeeded, "saved")
            }
        }
        _ => outcome(CommandOutcome::Rejected, "not simulated"),
    };
    // The result may not reach the coordinator at once.
    let p = w.faults.agent_drops;
    if w.chance(p) {
        let away = now + w.rng.random_range(2_000..40_000);
        w.hosts.get_mut(&node).expect("a host").away_until = away;
        w.note(format!("{node}'s agent dropped off after {id}"));
    }
    w.check(0);
    w.journal.insert(
        id,
        Journal::Done(Box::new(CommandResult {
            command_id: command.id,
            ..result
        })),
    );
}

impl AgentLink for FakeAgents {
    fn agents(&self) -> BTreeMap<String, AgentView> {
        let w = world_now(&self.world, &self.clock);
        let now = w.now;
        let servers_up = w
            .hosts
            .values()
            .filter(|h| h.server && h.up_at <= now)
            .count();
        let servers = w.hosts.values().filter(|h| h.server).count();
        w.hosts
            .iter()
            .map(|(name, host)| {
                let presence = if host.away_until <= now {
                    Presence::Connected
                } else {
                    Presence::Disconnected
                };
                let etcd = host.server.then(|| {
                    if host.up_at <= now && servers_up * 2 > servers {
                        Ok(())
                    } else {
                        Err("no quorum or not running".to_string())
                    }
                });
                (
                    name.clone(),
                    AgentView {
                        presence,
                        server: host.server,
                        arch: "amd64".into(),
                        k3s_version: host.binary.clone(),
                        binary_sha256: format!("sha-{}", host.binary),
                        failing_checks: Vec::new(),
                        checks: Vec::new(),
                        etcd,
                    },
                )
            })
            .collect()
    }

    fn run(
        &self,
        node: String,
        command: Command,
        timeout: Duration,
        _progress: mpsc::Sender<String>,
    ) -> BoxFuture<'_, Result<CommandResult, LinkError>> {
        Box::pin(async move {
            let id = command.id.clone();
            let started = tokio::time::Instant::now();
            let mut away_since: Option<tokio::time::Instant> = None;
            loop {
                if self.connected(&node) {
                    away_since = None;
                    let mut w = lock(&self.world);
                    match w.journal.get(&id).cloned() {
                        Some(Journal::Done(mut result)) => {
                            result.replayed = true;
                            w.maybe_kill();
                            return Ok(*result);
                        }
                        Some(Journal::Running) => {}
                        None => {
                            w.journal.insert(id.clone(), Journal::Running);
                            tokio::spawn(execute(
                                self.world.clone(),
                                self.clock.clone(),
                                node.clone(),
                                command.clone(),
                            ));
                        }
                    }
                } else {
                    let since = *away_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > self.agent_wait {
                        return Err(LinkError::AgentAway {
                            command: id,
                            away: self.agent_wait,
                        });
                    }
                }
                if started.elapsed() > timeout {
                    return Err(LinkError::NoResult {
                        command: id,
                        timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// No alerts gate in these schedules.
pub struct NoAlerts;

impl AlertSource for NoAlerts {
    fn firing<'a>(&'a self, _gate: &'a AlertGate) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The memory store, checking every decision as it is saved: servers one at
/// a time and before any worker, never more workers under way than allowed,
/// no batch taking more from a budget than it allows.
pub struct CheckingStore {
    pub inner: MemoryStore,
    pub world: Shared,
    pub max_unavailable: usize,
    /// The batches seen so far.
    pub batches: Mutex<u32>,
}

impl CheckingStore {
    fn check(&self, rollout: &RolloutRecord) {
        let mut w = lock(&self.world);
        let in_flight = |n: &&NodeProgress| n.step.is_in_flight();
        let servers: Vec<&str> = rollout
            .nodes
            .iter()
            .filter(|n| n.server)
            .filter(in_flight)
            .map(|n| n.node.as_str())
            .collect();
        if servers.len() > 1 {
            w.violation(format!("servers under way together: {servers:?}"));
        }
        let servers_left = rollout
            .nodes
            .iter()
            .any(|n| n.server && !n.step.is_terminal());
        let workers: Vec<&NodeProgress> = rollout
            .nodes
            .iter()
            .filter(|n| !n.server)
            .filter(in_flight)
            .collect();
        if servers_left && !workers.is_empty() {
            w.violation(format!(
                "workers started while servers remain: {:?}",
                workers.iter().map(|n| &n.node).collect::<Vec<_>>()
            ));
        }
        if workers.len() > self.max_unavailable {
            w.violation(format!(
                "{} workers under way, more than {}",
                workers.len(),
                self.max_unavailable
            ));
        }
        // A new batch, against the budgets the engine saw when it chose it
        // (read in the same round), beside the workers still draining.
        let batch = rollout.batches_started;
        let draining: Vec<&str> = workers
            .iter()
            .filter(|n| n.step <= Step::Drain)
            .map(|n| n.node.as_str())
            .collect();
        let mut seen = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        let started_now = batch > *seen && workers.iter().any(|n| n.batch == batch);
        *seen = batch;
        if started_now {
            let new: Vec<&str> = workers
                .iter()
                .filter(|n| n.batch == batch)
                .map(|n| n.node.as_str())
                .collect();
            for budget in w.last_budgets.clone() {
                // Only budgets the new batch takes from: the others were
                // judged when their nodes started.
                if !new.iter().any(|n| budget.pods_on(n) > 0) {
                    continue;
                }
                let holders: Vec<(&str, u32)> = draining
                    .iter()
                    .map(|n| (*n, budget.pods_on(n)))
                    .filter(|(_, pods)| *pods > 0)
                    .collect();
                let taken: u32 = holders.iter().map(|(_, p)| p).sum();
                if holders.len() >= 2 && taken > budget.allowed {
                    w.violation(format!(
                        "batch {batch} with {holders:?} takes {taken} from {} which allows {}",
                        budget.name, budget.allowed
                    ));
                }
            }
        }
    }
}

impl RolloutStore for CheckingStore {
    fn load(&self, id: i64) -> BoxFuture<'_, Result<Option<RolloutRecord>, StoreError>> {
        self.inner.load(id)
    }

    fn create(&self, rollout: RolloutRecord) -> BoxFuture<'_, Result<RolloutRecord, StoreError>> {
        self.inner.create(rollout)
    }

    fn save(
        &self,
        rollout: RolloutRecord,
        nodes: Vec<NodeProgress>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let saved = self.inner.save(rollout, nodes);
        Box::pin(async move {
            saved.await?;
            if let Some(latest) = self.inner.latest() {
                self.check(&latest);
            }
            lock(&self.world).maybe_kill();
            Ok(())
        })
    }

    fn audit(&self, event: AuditEvent, at_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.audit(event, at_ms)
    }
}
