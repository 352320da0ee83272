//! A node's walk through its steps.
//!
//! Before each step the worker saves that the step started, so a restarted
//! coordinator knows the step may have begun and runs it again (every step is
//! idempotent). Transient failures are retried with backoff a few times; a
//! step that fails for good marks the node failed, rolls its K3s back if the
//! new version was installed, and pauses the rollout with the reason.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::engine::{RolloutEngine, RolloutError};
use super::state::{Gate, Phase, Step, gate};
use super::steps::{StepError, StepOutcome};
use crate::clock::unix_ms;
use crate::store::{NodeProgress, RolloutRecord};

impl RolloutEngine {
    /// Runs `node` until it is done, failed, stopped or `shutdown` fires.
    pub(super) async fn run_node(self: Arc<Self>, node: String, shutdown: CancellationToken) {
        loop {
            let Some((rollout, progress)) = self.node_now(&node).await else {
                break;
            };
            if progress.step.is_terminal() || progress.step == Step::Pending {
                break;
            }
            // An install that may have been sent already finishes even when aborting:
            // the agent must not be left mid-swap without anyone watching.
            let resumed_install =
                progress.step == Step::Install && progress.step_started_ms.is_some();
            match gate(rollout.phase, progress.step) {
                Gate::Stop if !resumed_install => {
                    self.stop_node(&node).await;
                    break;
                }
                Gate::Wait => {
                    self.set_blocker(&node, Some("the rollout is paused".into()));
                    let mut changes = self.subscribe();
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                _ => {}
            }
            if progress.step_started_ms.is_none() && self.mark_started(&node).await.is_err() {
                tokio::time::sleep(self.settings.retry_base).await;
                continue;
            }
            let outcome = self
                .run_step_with_retries(&rollout, &progress, &shutdown)
                .await;
            if shutdown.is_cancelled() {
                break;
            }
            let saved = match outcome {
                Ok(outcome) => self.finish_step(&node, progress.step, outcome).await,
                Err(StepError::Aborted) => {
                    self.stop_node(&node).await;
                    break;
                }
                Err(err) => self.fail_node(&rollout, &progress, err.to_string()).await,
            };
            if let Err(err) = saved {
                tracing::error!(node, error = %err, "saving the node's progress failed; retrying");
                tokio::time::sleep(self.settings.retry_base).await;
            }
        }
        self.set_blocker(&node, None);
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
        self.wake.notify_one();
    }

    /// The rollout and this node's record as they are now.
    async fn node_now(&self, node: &str) -> Option<(RolloutRecord, NodeProgress)> {
        let active = self.active.lock().await;
        let rollout = active.as_ref()?;
        let progress = rollout.nodes.iter().find(|n| n.node == node)?.clone();
        Some((rollout.clone(), progress))
    }

    async fn mark_started(&self, node: &str) -> Result<(), RolloutError> {
        self.update(|rollout| {
            let n = node_mut(rollout, node);
            n.step_started_ms = Some(unix_ms());
            Ok(((), vec![node.to_string()]))
        })
        .await
        .map(|_| ())
    }

    async fn run_step_with_retries(
        self: &Arc<Self>,
        rollout: &RolloutRecord,
        progress: &NodeProgress,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome, StepError> {
        let mut delay = self.settings.retry_base;
        let mut transient_failures = 0;
        loop {
            match self
                .run_step(rollout, progress, transient_failures, shutdown)
                .await
            {
                Err(StepError::Transient(reason))
                    if transient_failures < self.settings.step_retries =>
                {
                    transient_failures += 1;
                    self.set_blocker(
                        &progress.node,
                        Some(format!(
                            "{} failed ({reason}); retry {transient_failures} in {delay:?}",
                            progress.step.as_str()
                        )),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Err(StepError::Transient(reason)),
                    }
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    async fn finish_step(
        &self,
        node: &str,
        step: Step,
        outcome: StepOutcome,
    ) -> Result<(), RolloutError> {
        self.set_blocker(node, None);
        let began_ms = self
            .node_now(node)
            .await
            .and_then(|(_, n)| n.step_started_ms);
        let took = began_ms.map_or(Duration::ZERO, |began| {
            Duration::from_millis(unix_ms().saturating_sub(began).max(0) as u64)
        });
        self.metrics.step_finished(step, took, &outcome.waits);
        let (_, saved) = self
            .update(|rollout| {
                let n = node_mut(rollout, node);
                for (reason, millis) in outcome.waits {
                    *n.waits.entry(reason).or_default() += millis;
                }
                if let Some(snapshot) = outcome.snapshot {
                    n.snapshot = snapshot;
                }
                if let Some(was) = outcome.was_unschedulable {
                    n.was_unschedulable = Some(was);
                    n.cordoned_by_us = !was;
                }
                if step == Step::Uncordon {
                    n.cordoned_by_us = false;
                }
                n.step = step.next(n.server);
                n.step_started_ms = None;
                if n.step == Step::Done {
                    n.finished_ms = Some(unix_ms());
                }
                Ok(((), vec![node.to_string()]))
            })
            .await?;
        let progress = saved
            .nodes
            .iter()
            .find(|n| n.node == node)
            .expect("node of the rollout");
        tracing::info!(
            rollout = saved.id,
            node,
            step = progress.step.as_str(),
            "node moved on"
        );
        self.audit(
            "coordinator",
            &format!("rollout.{}", step.as_str()),
            Some(node),
            format!("rollout {}: {} finished", saved.id, step.as_str()),
        )
        .await;
        if progress.step == Step::Done {
            self.audit(
                "coordinator",
                "rollout.node_upgraded",
                Some(node),
                format!(
                    "rollout {}: {} -> {}",
                    saved.id, progress.from_version, saved.target
                ),
            )
            .await;
        }
        Ok(())
    }

    /// The node stops here (abort); the controller lifts k3sfleet's cordon.
    async fn stop_node(&self, node: &str) {
        let stopped = self
            .update(|rollout| {
                let n = node_mut(rollout, node);
                n.step = Step::Aborted;
                n.step_started_ms = None;
                n.finished_ms = Some(unix_ms());
                Ok(((), vec![node.to_string()]))
            })
            .await;
        if let Err(err) = stopped {
            tracing::error!(node, error = %err, "recording an aborted node failed");
        }
    }

    /// Records the failure, rolls back K3s if the new version may be on the
    /// node, and pauses the rollout.
    async fn fail_node(
        &self,
        rollout: &RolloutRecord,
        progress: &NodeProgress,
        reason: String,
    ) -> Result<(), RolloutError> {
        let installed = matches!(progress.step, Step::WaitReady | Step::Settle);
        let mut failure = format!("{} failed: {reason}", progress.step.as_str());
        if installed {
            failure.push_str(&match self.roll_back(rollout, progress).await {
                Ok(message) => format!("; rolled back: {message}"),
                Err(message) => format!("; rollback failed: {message}"),
            });
        }
        tracing::warn!(
            rollout = rollout.id,
            node = progress.node,
            failure,
            "node failed; pausing the rollout"
        );
        let node = progress.node.clone();
        let text = failure.clone();
        self.update(|rollout| {
            let n = node_mut(rollout, &node);
            n.step = Step::Failed;
            n.failure = text.clone();
            n.step_started_ms = None;
            if rollout.phase == Phase::Running {
                rollout.phase = Phase::Paused;
            }
            if rollout.phase == Phase::Paused {
                rollout.pause_reason = format!("{node} {text}");
            }
            Ok(((), vec![node.clone()]))
        })
        .await?;
        self.audit(
            "coordinator",
            "rollout.node_failed",
            Some(&progress.node),
            failure,
        )
        .await;
        Ok(())
    }
}

pub(super) fn node_mut<'a>(rollout: &'a mut RolloutRecord, node: &str) -> &'a mut NodeProgress {
    rollout
        .nodes
        .iter_mut()
        .find(|n| n.node == node)
        .expect("workers only run nodes of the active rollout")
}
