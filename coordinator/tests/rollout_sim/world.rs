//! The simulated world a rollout runs in: hosts with a K3s binary and an
//! agent, a cluster with nodes, pods, and budgets that the pods' placement
//! drives, all on virtual time. It keeps the physical truth (who really
//! cordoned a node, which binary really runs) that the invariants are judged
//! against, and it injects the faults.

use std::collections::BTreeMap;

use k3sfleet_coordinator::drain::{Claim, CordonState, Owner};
use k3sfleet_coordinator::rollout::planner::Budget;
use k3sfleet_proto::v1::CommandResult;
use rand::Rng;
use rand::rngs::StdRng;

pub const FROM: &str = "v1.31.4+k3s1";
pub const TO: &str = "v1.31.5+k3s1";

/// How often each kind of fault strikes, per call.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// A Kubernetes call fails before it takes effect.
    pub api_error: f64,
    /// ... of which this share is permanent (403-like).
    pub api_permanent: f64,
    /// A write takes effect but its answer is lost.
    pub api_error_after: f64,
    /// A Kubernetes call answers only after a long while.
    pub api_slow: f64,
    /// An agent command fails in a way that may pass.
    pub agent_fails: f64,
    /// An agent drops off for a while right after finishing a command.
    pub agent_drops: f64,
    /// The coordinator is killed right after a call returns.
    pub kill: f64,
}

impl Faults {
    pub fn random(rng: &mut StdRng) -> Faults {
        let level: f64 = rng.random_range(0.0..1.0);
        Faults {
            api_error: 0.15 * level,
            api_permanent: if rng.random_bool(0.2) { 0.05 } else { 0.0 },
            api_error_after: 0.1 * level,
            api_slow: 0.05 * level,
            agent_fails: 0.15 * level,
            agent_drops: 0.1 * level,
            kill: 0.02 * level,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Host {
    pub server: bool,
    /// The binary on disk and the one kept for rollback.
    pub binary: String,
    pub previous: Option<String>,
    /// K3s is (re)starting until then: the node is NotReady.
    pub up_at: i64,
    /// The agent is away (disconnected) until then.
    pub away_until: i64,
    pub unschedulable: bool,
    /// k3sfleet's annotation, which lingers when someone else uncordons.
    pub claim: Option<Claim>,
    /// Who set spec.unschedulable last was an operator (managedFields).
    pub set_by_operator: bool,
    /// The truth: the operator cordoned it and wants it so.
    pub operator_cordoned: bool,
    /// Its new binary does not start: the agent rolls it back.
    pub broken: bool,
}

#[derive(Debug, Clone)]
pub struct SimPod {
    pub app: usize,
    /// "" while Pending (no node to go to).
    pub node: String,
    pub ready_at: i64,
    /// Terminating: gone at this time.
    pub gone_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub replicas: usize,
    /// The app's PodDisruptionBudget, if it has one.
    pub min_available: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum Journal {
    Running,
    Done(Box<CommandResult>),
}

pub struct World {
    pub now: i64,
    pub rng: StdRng,
    pub faults: Faults,
    pub max_unavailable: usize,
    pub hosts: BTreeMap<String, Host>,
    pub apps: Vec<App>,
    pub pods: Vec<SimPod>,
    /// The agents' command journals, by command id.
    pub journal: BTreeMap<String, Journal>,
    /// The budgets as last shown to the engine.
    pub last_budgets: Vec<Budget>,
    /// When each skipped node's skip was accepted.
    pub skipped_at: BTreeMap<String, i64>,
    /// Successful side effects per (node, operation, attempt).
    pub successes: BTreeMap<(String, String, u32), u32>,
    pub violations: Vec<String>,
    pub kill_requested: bool,
    pub log: Vec<String>,
    /// Faults for the next calls of a kind, before the random ones.
    pub scripted: Vec<(&'static str, Scripted)>,
    /// While set, reading the budgets waits (a slow API at the worst moment).
    pub hold_budgets: bool,
    /// Someone is waiting in a held budgets read.
    pub budgets_waiting: bool,
    /// Longhorn volumes, when the world runs Longhorn.
    pub volumes: Vec<SimVolume>,
}

/// A Longhorn volume: its replicas, by node, with when each is healthy
/// again (`None`: failed and not rebuilding; a time in the future:
/// rebuilding), and since when each has been failed.
#[derive(Debug, Clone)]
pub struct SimVolume {
    pub name: String,
    pub replicas: Vec<(String, Option<i64>)>,
    pub failed_since: BTreeMap<String, i64>,
}

/// Longhorn's replica-replenishment-wait-interval: a replica failed this
/// long is rebuilt on another node.
const REPLENISH_AFTER_MS: i64 = 600_000;

impl SimVolume {
    pub fn healthy(&self, now: i64) -> usize {
        self.replicas
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| at <= now))
            .count()
    }
}

/// A fault a test asks for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripted {
    /// The write takes effect, its answer is lost.
    ErrorAfter,
}

impl World {
    pub fn new(mut rng: StdRng, start_ms: i64) -> World {
        let servers = if rng.random_bool(0.6) { 3 } else { 1 };
        let workers = rng.random_range(1..=8);
        let mut hosts = BTreeMap::new();
        for (name, server) in (1..=servers)
            .map(|i| (format!("server-{i}"), true))
            .chain((1..=workers).map(|i| (format!("worker-{i:02}"), false)))
        {
            hosts.insert(
                name,
                Host {
                    server,
                    binary: FROM.into(),
                    previous: None,
                    up_at: start_ms,
                    away_until: start_ms,
                    unschedulable: false,
                    claim: None,
                    set_by_operator: false,
                    operator_cordoned: false,
                    broken: rng.random_bool(0.08),
                },
            );
        }
        let apps: Vec<App> = (0..rng.random_range(0..=4))
            .map(|i| {
                let replicas = rng.random_range(1..=5usize);
                let min_available = match rng.random_range(0..10) {
                    0..=1 => None,
                    // A budget that can never allow a disruption: its drains time out.
                    2 => Some(replicas),
                    _ => Some(replicas.saturating_sub(rng.random_range(1..=2))),
                };
                App {
                    name: format!("shop/app-{i}"),
                    replicas,
                    min_available,
                }
            })
            .collect();
        let names: Vec<String> = hosts.keys().cloned().collect();
        let mut pods = Vec::new();
        for (index, app) in apps.iter().enumerate() {
            for _ in 0..app.replicas {
                let node = names[rng.random_range(0..names.len())].clone();
                pods.push(SimPod {
                    app: index,
                    node,
                    ready_at: start_ms,
                    gone_at: None,
                });
            }
        }
        let faults = Faults::random(&mut rng);
        let max_unavailable = rng.random_range(1..=4);
        World {
            now: start_ms,
            rng,
            faults,
            max_unavailable,
            hosts,
            apps,
            pods,
            journal: BTreeMap::new(),
            last_budgets: Vec::new(),
            skipped_at: BTreeMap::new(),
            successes: BTreeMap::new(),
            violations: Vec::new(),
            kill_requested: false,
            log: Vec::new(),
            scripted: Vec::new(),
            hold_budgets: false,
            budgets_waiting: false,
            volumes: Vec::new(),
        }
        .with_longhorn()
    }

    /// Half the worlds run Longhorn: a few volumes of 2 or 3 replicas on
    /// distinct nodes (1-replica volumes block their node's drain for good:
    /// they are in the drain and planner tests, not here).
    fn with_longhorn(mut self) -> World {
        if !self.rng.random_bool(0.5) || self.hosts.len() < 2 {
            return self;
        }
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for v in 0..self.rng.random_range(1..=3) {
            let wanted = self.rng.random_range(2..=3usize).min(names.len());
            let mut nodes = names.clone();
            let mut replicas = Vec::new();
            for _ in 0..wanted {
                let node = nodes.remove(self.rng.random_range(0..nodes.len()));
                replicas.push((node, Some(self.now)));
            }
            self.volumes.push(SimVolume {
                name: format!("pvc-{v}"),
                replicas,
                failed_since: BTreeMap::new(),
            });
        }
        self
    }

    /// Longhorn's view of the world, as the engine reads it.
    pub fn longhorn(&self) -> Option<k3sfleet_coordinator::longhorn::LonghornView> {
        use k3sfleet_coordinator::longhorn::{DrainPolicy, LonghornView, Replica, Volume};
        if self.volumes.is_empty() {
            return None;
        }
        let now = self.now;
        Some(LonghornView {
            policy: DrainPolicy::DEFAULT,
            nodes: self.hosts.keys().map(|n| (n.clone(), false)).collect(),
            volumes: self
                .volumes
                .iter()
                .map(|v| {
                    let healthy = v.healthy(now);
                    Volume {
                        name: v.name.clone(),
                        wanted_replicas: v.replicas.len() as u32,
                        robustness: if healthy == v.replicas.len() {
                            "healthy".into()
                        } else if healthy > 0 {
                            "degraded".into()
                        } else {
                            "faulted".into()
                        },
                        attached_to: None,
                        replicas: v
                            .replicas
                            .iter()
                            .enumerate()
                            .map(|(i, (node, at))| Replica {
                                name: format!("{}-r-{i}", v.name),
                                node: node.clone(),
                                healthy: at.is_some_and(|at| at <= now),
                                stopped: false,
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
    }

    /// A node's instance manager goes (its drain evicted it, or K3s
    /// restarts): its replicas fail. A volume left without a healthy replica
    /// is what Longhorn's rules and the rollout's must never allow.
    pub fn replicas_down(&mut self, node: &str) {
        let now = self.now;
        let mut lost = Vec::new();
        for volume in &mut self.volumes {
            for (at_node, at) in &mut volume.replicas {
                if at_node == node {
                    *at = None;
                    volume.failed_since.insert(node.to_string(), now);
                }
            }
            if volume.healthy(now) == 0 {
                lost.push(volume.name.clone());
            }
        }
        for name in lost {
            self.violation(format!(
                "Longhorn volume {name} has no healthy replica (after {node})"
            ));
        }
    }

    /// A node back in service: its failed replicas rebuild, for a while.
    pub fn replicas_rebuild(&mut self, node: &str) {
        let now = self.now;
        let rebuild = self.rng.random_range(2_000..20_000);
        for volume in &mut self.volumes {
            for (at_node, at) in &mut volume.replicas {
                if at_node == node && at.is_none() {
                    *at = Some(now + rebuild);
                    volume.failed_since.remove(node);
                }
            }
        }
    }

    /// Replicas failed for longer than Longhorn waits are rebuilt on another
    /// schedulable node that holds none of the volume's.
    fn replenish(&mut self) {
        let now = self.now;
        let schedulable: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| !h.unschedulable && h.up_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let rebuild = self.rng.random_range(2_000..20_000);
        for volume in &mut self.volumes {
            let overdue: Vec<String> = volume
                .failed_since
                .iter()
                .filter(|(_, since)| now - **since >= REPLENISH_AFTER_MS)
                .map(|(n, _)| n.clone())
                .collect();
            for old in overdue {
                let Some(new) = schedulable
                    .iter()
                    .find(|n| !volume.replicas.iter().any(|(r, _)| r == *n))
                else {
                    continue;
                };
                if let Some(slot) = volume.replicas.iter_mut().find(|(n, _)| *n == old) {
                    *slot = (new.clone(), Some(now + rebuild));
                }
                volume.failed_since.remove(&old);
            }
        }
    }

    /// Whether Longhorn would let `node`'s instance manager go: no volume
    /// whose only healthy replicas are there.
    pub fn longhorn_releases(&self, node: &str) -> bool {
        let now = self.now;
        self.volumes.iter().all(|v| {
            !v.replicas.iter().any(|(n, _)| n == node)
                || v.replicas
                    .iter()
                    .any(|(n, at)| n != node && at.is_some_and(|at| at <= now))
        })
    }

    /// A fault-free world of `workers` workers (and no servers), no pods,
    /// for tests that script their own trouble.
    pub fn plain(start_ms: i64, workers: usize, max_unavailable: usize) -> World {
        let mut world = World::new(rand::SeedableRng::seed_from_u64(7), start_ms);
        world.faults = Faults {
            api_error: 0.0,
            api_permanent: 0.0,
            api_error_after: 0.0,
            api_slow: 0.0,
            agent_fails: 0.0,
            agent_drops: 0.0,
            kill: 0.0,
        };
        world.max_unavailable = max_unavailable;
        world.apps.clear();
        world.pods.clear();
        let template = world.hosts.values().next().cloned().expect("a host");
        world.hosts = (1..=workers)
            .map(|i| {
                (
                    format!("worker-{i:02}"),
                    Host {
                        server: false,
                        broken: false,
                        ..template.clone()
                    },
                )
            })
            .collect();
        world
    }

    /// The scripted fault for the next call of `call`, if any.
    pub fn take_scripted(&mut self, call: &str) -> Option<Scripted> {
        let index = self.scripted.iter().position(|(c, _)| *c == call)?;
        Some(self.scripted.remove(index).1)
    }

    pub fn note(&mut self, text: String) {
        if self.log.len() > 400 {
            self.log.drain(..100);
        }
        self.log.push(format!("{:>8}ms {text}", self.now));
    }

    pub fn violation(&mut self, text: String) {
        self.note(format!("VIOLATION {text}"));
        self.violations.push(text);
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    /// After a call returns: maybe the coordinator dies right here.
    pub fn maybe_kill(&mut self) {
        if self.chance(self.faults.kill) {
            self.kill_requested = true;
        }
    }

    /// Moves the pods on: terminated ones go, missing replicas are created
    /// and placed on a schedulable node, and become Ready after a while.
    pub fn advance(&mut self, now: i64) {
        self.now = self.now.max(now);
        let now = self.now;
        self.replenish();
        self.pods.retain(|p| p.gone_at.is_none_or(|at| at > now));
        for index in 0..self.apps.len() {
            let live = self
                .pods
                .iter()
                .filter(|p| p.app == index && p.gone_at.is_none())
                .count();
            for _ in live..self.apps[index].replicas {
                self.pods.push(SimPod {
                    app: index,
                    node: String::new(),
                    ready_at: 0,
                    gone_at: None,
                });
            }
        }
        let schedulable: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| !h.unschedulable && h.up_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        if schedulable.is_empty() {
            return;
        }
        for i in 0..self.pods.len() {
            if self.pods[i].node.is_empty() {
                let pick = self.rng.random_range(0..schedulable.len());
                let ready_delay = self.rng.random_range(1_000..8_000);
                self.pods[i].node = schedulable[pick].clone();
                self.pods[i].ready_at = now + ready_delay;
            }
        }
    }

    fn healthy(&self, pod: &SimPod) -> bool {
        !pod.node.is_empty() && pod.gone_at.is_none() && pod.ready_at <= self.now
    }

    /// What the budget of `app` allows now (None without one).
    pub fn allowed(&self, app: usize) -> Option<usize> {
        let min = self.apps[app].min_available?;
        let healthy = self
            .pods
            .iter()
            .filter(|p| p.app == app && self.healthy(p))
            .count();
        Some(healthy.saturating_sub(min))
    }

    /// Every budget with its live allowance and healthy pods per node.
    pub fn budgets(&self) -> Vec<Budget> {
        (0..self.apps.len())
            .filter_map(|app| {
                let allowed = self.allowed(app)?;
                let mut pods_on: BTreeMap<String, u32> = BTreeMap::new();
                for pod in self.pods.iter().filter(|p| p.app == app && self.healthy(p)) {
                    *pods_on.entry(pod.node.clone()).or_default() += 1;
                }
                let min = self.apps[app].min_available.unwrap_or(0);
                Some(Budget {
                    name: self.apps[app].name.clone(),
                    allowed: allowed as u32,
                    pods_on,
                    // Never allows a disruption even with every replica healthy.
                    permanent: (min >= self.apps[app].replicas)
                        .then(|| "wants every pod healthy".to_string()),
                })
            })
            .collect()
    }

    /// Evicts a pod (as the Eviction API would allow it); false when its
    /// budget allows no disruption now.
    pub fn evict(&mut self, index: usize) -> bool {
        let app = self.pods[index].app;
        let counts = self.healthy(&self.pods[index]);
        if counts && self.allowed(app) == Some(0) {
            return false;
        }
        let termination = self.rng.random_range(500..3_000);
        self.pods[index].gone_at = Some(self.now + termination);
        let name = self.apps[app].name.clone();
        let node = self.pods[index].node.clone();
        self.note(format!("evicted a pod of {name} from {node}"));
        true
    }

    pub fn cordon_state(&self, node: &str) -> CordonState {
        let host = &self.hosts[node];
        if !host.unschedulable {
            CordonState::Schedulable
        } else {
            match &host.claim {
                Some(claim) if !host.set_by_operator => CordonState::Claimed(claim.clone()),
                _ => CordonState::Foreign,
            }
        }
    }

    /// A side effect on `node` at the coordinator's request: a skipped node
    /// must never see one (lifting k3sfleet's own cordon aside).
    pub fn touched(&mut self, node: &str, what: &str) {
        if let Some(at) = self.skipped_at.get(node).copied() {
            self.violation(format!(
                "{node} was skipped at {at}ms but k3sfleet ran {what} on it at {}ms",
                self.now
            ));
        }
    }

    /// Checks what must hold whenever a node's cordon or K3s changes.
    pub fn check(&mut self, rollout: u64) {
        let now = self.now;
        let restarting: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.server && h.up_at > now)
            .map(|(n, _)| n.clone())
            .collect();
        if restarting.len() >= 2 {
            self.violation(format!("two servers down at once: {restarting:?}"));
        }
        let ours = |h: &Host| {
            h.unschedulable
                && !h.set_by_operator
                && h.claim
                    .as_ref()
                    .is_some_and(|c| c.owner == Owner::Rollout(rollout))
        };
        let servers: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.server && ours(h))
            .map(|(n, _)| n.clone())
            .collect();
        if servers.len() >= 2 {
            self.violation(format!("two servers cordoned by the rollout: {servers:?}"));
        }
        let workers = self.hosts.values().filter(|h| !h.server && ours(h)).count();
        if workers > self.max_unavailable {
            self.violation(format!(
                "{workers} workers cordoned by the rollout, more than {}",
                self.max_unavailable
            ));
        }
    }

    /// A successful side effect of one attempt; a second one is a step run twice.
    pub fn succeeded(&mut self, node: &str, what: &str, attempt: u32) {
        let count = self
            .successes
            .entry((node.to_string(), what.to_string(), attempt))
            .or_default();
        *count += 1;
        if *count > 1 {
            let count = *count;
            self.violation(format!(
                "{what} succeeded {count} times on {node} in attempt {attempt}"
            ));
        }
    }

    /// `kubectl cordon` (a no-op on a cordoned node, as kubectl's is).
    pub fn operator_cordon(&mut self, node: &str) {
        let host = self.hosts.get_mut(node).expect("a host");
        if !host.unschedulable {
            host.unschedulable = true;
            host.set_by_operator = true;
            host.operator_cordoned = true;
            self.note(format!("operator cordoned {node}"));
        }
    }

    /// `kubectl uncordon`: the field goes, k3sfleet's annotation stays.
    pub fn operator_uncordon(&mut self, node: &str) {
        let host = self.hosts.get_mut(node).expect("a host");
        if host.unschedulable {
            host.unschedulable = false;
            host.set_by_operator = false;
            host.operator_cordoned = false;
            self.note(format!("operator uncordoned {node}"));
            self.replicas_rebuild(node);
        }
    }
}

/// The attempt a command id names: rollout-<id>-<node>-<op>-<attempt>[.<retry>].
pub fn attempt_of(command_id: &str) -> u32 {
    command_id
        .rsplit('-')
        .next()
        .and_then(|tail| tail.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
