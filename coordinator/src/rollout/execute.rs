//! The operations a rollout carries out, one try each: the only part of the
//! rollout that changes the world. Each reads what it needs, acts, and
//! reports an [`OpResult`]; deciding what the result means is
//! [`super::decide::on_result`]'s. Every operation is safe to run again for
//! the same try: cordons and uncordons go by the claim on the Node, agent
//! commands carry an id the agent runs at most once.

use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::{
    Command, CommandOutcome, CommandResult, DrainOutcome, EtcdSnapshot, InstallK3s, RollbackK3s,
    command, command_result, drain_event,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::action::{Op, OpFailure, OpKey, OpResult, StepOutcome};
use super::cluster::{Cluster, ClusterError, DrainRequest};
use super::decide::DEFAULT_HEALTH_TIMEOUT;
use super::link::{AgentLink, LinkError};
use crate::drain::{Claims, Cordoned, Owner, Uncordoned};
use crate::store::{NodeProgress, RolloutRecord};

/// Time for the download on top of the agent's health timeout.
const INSTALL_MARGIN: Duration = Duration::from_secs(600);
/// An etcd snapshot or a rollback that takes longer is not going to finish.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// What the executors work with.
#[derive(Clone)]
pub struct Executors {
    pub cluster: Arc<dyn Cluster>,
    pub link: Arc<dyn AgentLink>,
    pub claims: Arc<Claims>,
}

/// A line for the status view while an operation runs.
pub type Progress = mpsc::Sender<(String, String)>;

impl Executors {
    /// Carries out one try of `key` for `node` of `rollout` (as saved when
    /// it was sent).
    pub async fn execute(
        &self,
        key: OpKey,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        progress: Progress,
        cancel: CancellationToken,
    ) -> OpResult {
        let say = Say {
            node: node.node.clone(),
            progress,
        };
        let outcome = match key.op {
            Op::Snapshot => self.snapshot(&key, rollout, &say).await,
            Op::Cordon => self.cordon(rollout, node).await,
            Op::Drain => self.drain(rollout, node, &say, cancel).await,
            Op::Install => self.install(&key, rollout, &say).await,
            Op::Uncordon | Op::Release => self.uncordon(rollout, node).await,
            Op::RollBack => self.roll_back(&key, node, &say).await,
        };
        OpResult { key, outcome }
    }

    async fn snapshot(
        &self,
        key: &OpKey,
        rollout: &RolloutRecord,
        say: &Say,
    ) -> Result<StepOutcome, OpFailure> {
        let name = format!("k3sfleet-rollout-{}-{}", rollout.id, say.node);
        let command = Command {
            id: key.command_id(),
            action: Some(command::Action::EtcdSnapshot(EtcdSnapshot {
                name: name.clone(),
            })),
        };
        let result = self.run(say, command, COMMAND_TIMEOUT).await?;
        let snapshot = match result.detail {
            Some(command_result::Detail::EtcdSnapshot(detail))
                if !detail.snapshot_name.is_empty() =>
            {
                detail.snapshot_name
            }
            _ => name,
        };
        Ok(StepOutcome {
            snapshot: Some(snapshot),
            ..Default::default()
        })
    }

    /// Refuses before cordoning when the drain could not evict the node's
    /// pods anyway (unmanaged or emptyDir pods without the options, a pod
    /// under two budgets); then cordons under the rollout's claim.
    async fn cordon(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
    ) -> Result<StepOutcome, OpFailure> {
        let name = node.node.clone();
        let request = DrainRequest::for_rollout(&rollout.options);
        let refused = self
            .cluster
            .drain_refusals(name.clone(), request)
            .await
            .map_err(failure)?;
        if !refused.is_empty() {
            return Err(OpFailure::permanent(format!(
                "its drain could not evict {}; nothing was changed",
                refused.join("; ")
            )));
        }
        let owner = Owner::Rollout(rollout.id as u64);
        let cordoned = self
            .cluster
            .cordon(name.clone(), owner.clone())
            .await
            .map_err(failure)?;
        let (ours, note) = match cordoned {
            Cordoned::Now | Cordoned::Already => (true, None),
            Cordoned::Foreign => (
                false,
                Some("it was cordoned already; it stays cordoned after its upgrade".into()),
            ),
            Cordoned::ClaimedBy(claim) => match &claim.owner {
                Owner::Drain(actor) if self.claims.is_draining(&name) => {
                    return Err(OpFailure::retryable(format!(
                        "{actor} is draining it; waiting for that drain to end"
                    )));
                }
                Owner::Drain(actor) => (
                    false,
                    Some(format!(
                        "an earlier drain by {actor} left it cordoned; it stays cordoned after its upgrade"
                    )),
                ),
                // Only one rollout runs at a time: another rollout's claim is left over.
                Owner::Rollout(_) => {
                    match self
                        .cluster
                        .adopt(name.clone(), claim.clone(), owner)
                        .await
                        .map_err(failure)?
                    {
                        Cordoned::Now | Cordoned::Already => (true, None),
                        other => {
                            return Err(OpFailure::retryable(format!(
                                "its cordon changed while taking it over: {other:?}"
                            )));
                        }
                    }
                }
            },
        };
        Ok(StepOutcome {
            cordon_ours: Some(ours),
            note,
            ..Default::default()
        })
    }

    async fn drain(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
        say: &Say,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, OpFailure> {
        let request = DrainRequest::for_rollout(&rollout.options);
        if rollout.options.longhorn_evict_replicas {
            self.evict_longhorn_replicas(&node.node, request.timeout, say)
                .await?;
        }
        let (events, mut received) = mpsc::channel(64);
        let shown = async {
            while let Some(event) = received.recv().await {
                if let Some(text) = describe_drain_event(event) {
                    say.line(text).await;
                }
            }
        };
        let drained = self
            .cluster
            .drain(node.node.clone(), request, events, cancel);
        let (result, ()) = tokio::join!(drained, shown);
        let result = result.map_err(failure)?;
        match DrainOutcome::try_from(result.outcome).unwrap_or(DrainOutcome::Unspecified) {
            DrainOutcome::Drained => Ok(StepOutcome {
                waits: result
                    .waits
                    .into_iter()
                    .map(|w| (w.reason, w.millis))
                    .collect(),
                ..Default::default()
            }),
            _ => Err(OpFailure::permanent(format!("drain: {}", result.message))),
        }
    }

    async fn install(
        &self,
        key: &OpKey,
        rollout: &RolloutRecord,
        say: &Say,
    ) -> Result<StepOutcome, OpFailure> {
        let health_timeout = match rollout.options.health_timeout_seconds {
            0 => DEFAULT_HEALTH_TIMEOUT,
            seconds => Duration::from_secs(seconds.into()),
        };
        let command = Command {
            id: key.command_id(),
            action: Some(command::Action::InstallK3s(InstallK3s {
                version: rollout.target.clone(),
                source: rollout.options.source.clone(),
                health_timeout_seconds: health_timeout.as_secs() as u32,
            })),
        };
        self.run(say, command, health_timeout + INSTALL_MARGIN)
            .await?;
        Ok(StepOutcome::default())
    }

    /// Asks Longhorn to move the node's replicas off it, and waits until it
    /// has (their volumes whole elsewhere), for at most `timeout`. Nothing
    /// to do on a node Longhorn does not run on.
    async fn evict_longhorn_replicas(
        &self,
        node: &str,
        timeout: Duration,
        say: &Say,
    ) -> Result<(), OpFailure> {
        let is_longhorn_node = |view: &Option<crate::longhorn::LonghornView>| {
            view.as_ref().is_some_and(|v| v.is_longhorn_node(node))
        };
        let view = self.cluster.longhorn().await.map_err(failure)?;
        if !is_longhorn_node(&view) {
            return Ok(());
        }
        // The volumes that had a replica here: done when none has one here
        // any more and each is whole again elsewhere.
        let moving: Vec<String> = view
            .iter()
            .flat_map(|v| v.volumes_on(node))
            .map(|v| v.name.clone())
            .collect();
        self.cluster
            .request_longhorn_eviction(node.to_string(), true)
            .await
            .map_err(failure)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self.cluster.longhorn().await.map_err(failure)?;
            let Some(view) = view else {
                return Ok(());
            };
            let left: Vec<String> = view.volumes_on(node).map(|v| v.describe()).collect();
            let rebuilt = view
                .volumes
                .iter()
                .filter(|v| moving.contains(&v.name))
                .all(|v| v.is_whole());
            if left.is_empty() && rebuilt {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OpFailure::permanent(format!(
                    "Longhorn did not move every replica off {node} within {}s: {}",
                    timeout.as_secs(),
                    left.join("; ")
                )));
            }
            say.line(format!(
                "Longhorn moving replicas off {node}: {}",
                if left.is_empty() {
                    "waiting for the new replicas to finish rebuilding".to_string()
                } else {
                    left.join("; ")
                }
            ))
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn uncordon(
        &self,
        rollout: &RolloutRecord,
        node: &NodeProgress,
    ) -> Result<StepOutcome, OpFailure> {
        if rollout.options.longhorn_evict_replicas
            && let Ok(Some(view)) = self.cluster.longhorn().await
            && view.nodes.get(&node.node) == Some(&true)
        {
            // Replicas may come back to it now.
            self.cluster
                .request_longhorn_eviction(node.node.clone(), false)
                .await
                .map_err(failure)?;
        }
        let owner = Owner::Rollout(rollout.id as u64);
        let note = match self
            .cluster
            .uncordon(node.node.clone(), owner)
            .await
            .map_err(failure)?
        {
            Uncordoned::Now | Uncordoned::Already => None,
            Uncordoned::NotOurs(_) => {
                Some("left cordoned: someone else cordoned it meanwhile".to_string())
            }
        };
        Ok(StepOutcome {
            note,
            ..Default::default()
        })
    }

    /// Declarative: "run the binary the node ran before" (its version and
    /// digest as recorded when the node started), so running it again after
    /// an interruption finds that binary in place and changes nothing.
    async fn roll_back(
        &self,
        key: &OpKey,
        node: &NodeProgress,
        say: &Say,
    ) -> Result<StepOutcome, OpFailure> {
        let command = Command {
            id: key.command_id(),
            action: Some(command::Action::RollbackK3s(RollbackK3s {
                version: node.from_version.clone(),
                sha256: node.from_sha256.clone(),
            })),
        };
        let result = self.run(say, command, COMMAND_TIMEOUT).await?;
        Ok(StepOutcome {
            note: Some(result.message),
            ..Default::default()
        })
    }

    /// Runs an agent command; the agent's answer decides success, and
    /// whether a failure may pass.
    async fn run(
        &self,
        say: &Say,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, OpFailure> {
        let (lines, mut received) = mpsc::channel(16);
        let shown = async {
            while let Some(line) = received.recv().await {
                say.line(line).await;
            }
        };
        let ran = self.link.run(say.node.clone(), command, timeout, lines);
        let (result, ()) = tokio::join!(ran, shown);
        let result = result.map_err(|err: LinkError| OpFailure {
            retryable: err.is_retryable(),
            message: err.to_string(),
        })?;
        match CommandOutcome::try_from(result.outcome).unwrap_or(CommandOutcome::Unspecified) {
            CommandOutcome::Succeeded | CommandOutcome::NoOp => Ok(result),
            CommandOutcome::Failed if result.retryable => Err(OpFailure::retryable(format!(
                "the agent reports: {}",
                result.message
            ))),
            _ => Err(OpFailure::permanent(format!(
                "the agent reports: {}",
                result.message
            ))),
        }
    }
}

fn failure(err: ClusterError) -> OpFailure {
    OpFailure {
        retryable: err.retryable,
        message: err.message,
    }
}

/// Progress lines of one node's operation.
struct Say {
    node: String,
    progress: Progress,
}

impl Say {
    async fn line(&self, text: String) {
        // Nobody watching is no reason to stop.
        let _ = self.progress.send((self.node.clone(), text)).await;
    }
}

fn describe_drain_event(event: k3sfleet_proto::v1::DrainEvent) -> Option<String> {
    match event.event? {
        drain_event::Event::Blocked(blocked) => {
            let pod = blocked
                .pod
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or_default();
            Some(if blocked.pdb.is_empty() {
                format!("waiting to evict {pod}: {}", blocked.message)
            } else {
                format!(
                    "waiting on PDB {}: {}/{} healthy (evicting {pod})",
                    blocked.pdb, blocked.current_healthy, blocked.desired_healthy
                )
            })
        }
        drain_event::Event::Evicting(evicting) => {
            let pod = evicting
                .pod
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or_default();
            Some(format!("evicting {pod}"))
        }
        _ => None,
    }
}
