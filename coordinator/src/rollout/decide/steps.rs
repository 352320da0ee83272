//! The steps whose outcome is read off the world rather than carried out:
//! pre-checks, waiting for the upgraded node to be Ready, and settling.

use super::{
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_SETTLE, Decision, elapsed, holds_cordon, seconds_or, secs,
};
use crate::rollout::action::{Action, StepOutcome};
use crate::rollout::observed::Observed;
use crate::rollout::settings::EngineSettings;
use crate::rollout::state::Step;
use crate::store::{NodeProgress, RolloutRecord};

pub(super) fn pre_check(
    rollout: &RolloutRecord,
    node: &NodeProgress,
    seen: &Observed,
    settings: &EngineSettings,
    decision: &mut Decision,
) {
    let mut problems = seen.node_problems(&node.node);
    if node.server {
        problems.extend(seen.quorum_problems(&node.node));
        // One server at a time, whatever the record says: a server still
        // cordoned by this rollout is not back in service.
        for other in rollout
            .nodes
            .iter()
            .filter(|n| n.server && n.node != node.node)
        {
            if holds_cordon(rollout, other, seen) || other.cordoned_by_us {
                problems.push(format!("{} is still cordoned by this rollout", other.node));
            }
        }
    }
    if problems.is_empty() {
        decision.actions.push(Action::Pass {
            node: node.node.clone(),
            from: Step::PreCheck,
            outcome: waited("pre-checks", node, seen.now_ms),
        });
        return;
    }
    let summary = problems.join("; ");
    if elapsed(node.step_started_ms, seen.now_ms, settings.pre_check_wait) {
        decision.actions.push(Action::Fail {
            node: node.node.clone(),
            from: Step::PreCheck,
            reason: format!(
                "pre-checks still failing after {}s: {summary}",
                settings.pre_check_wait.as_secs()
            ),
            roll_back: false,
        });
    } else {
        decision.block(&node.node, format!("pre-checks: {summary}"));
    }
}

pub(super) fn wait_ready(
    rollout: &RolloutRecord,
    node: &NodeProgress,
    seen: &Observed,
    decision: &mut Decision,
) {
    let missing = seen.upgraded_problems(&node.node, &rollout.target);
    if missing.is_empty() {
        decision.actions.push(Action::Pass {
            node: node.node.clone(),
            from: Step::WaitReady,
            outcome: waited("node ready", node, seen.now_ms),
        });
        return;
    }
    let timeout = seconds_or(
        rollout.options.health_timeout_seconds,
        DEFAULT_HEALTH_TIMEOUT,
    );
    if elapsed(node.step_started_ms, seen.now_ms, timeout) {
        decision.actions.push(Action::Fail {
            node: node.node.clone(),
            from: Step::WaitReady,
            reason: format!(
                "not Ready on {} within {}s: {}",
                rollout.target,
                timeout.as_secs(),
                missing.join("; ")
            ),
            roll_back: true,
        });
    } else {
        decision.block(&node.node, format!("waiting for {}", missing.join("; ")));
    }
}

/// Healthy for the whole settle period, watched without a gap: while the
/// node cannot be seen the hold starts over rather than failing a node that
/// may be fine; seen unhealthy, it fails (and is rolled back).
pub(super) fn settle(
    rollout: &RolloutRecord,
    node: &NodeProgress,
    seen: &Observed,
    decision: &mut Decision,
) {
    let now = seen.now_ms;
    let name = node.node.clone();
    let period = seconds_or(rollout.options.settle_seconds, DEFAULT_SETTLE);
    let unseen_limit = seconds_or(
        rollout.options.health_timeout_seconds,
        DEFAULT_HEALTH_TIMEOUT,
    );
    let health = seen.settle_health(&name, &rollout.target);
    if !health.unhealthy.is_empty() {
        decision.actions.push(Action::Fail {
            node: name,
            from: Step::Settle,
            reason: format!("unhealthy while settling: {}", health.unhealthy.join("; ")),
            roll_back: true,
        });
        return;
    }
    if health.unseen.is_empty() {
        let since = node.healthy_since_ms.unwrap_or(now);
        if node.healthy_since_ms.is_none() || node.unseen_since_ms.is_some() {
            decision.actions.push(Action::Settling {
                node: name.clone(),
                healthy_since_ms: Some(since),
                unseen_since_ms: None,
            });
        }
        if elapsed(Some(since), now, period) {
            decision.actions.push(Action::Pass {
                node: name,
                from: Step::Settle,
                outcome: waited("settle", node, now),
            });
        } else {
            decision.block(
                &name,
                format!(
                    "settling: healthy for {}s of {}s",
                    secs(now - since),
                    period.as_secs()
                ),
            );
        }
        return;
    }
    let since = node.unseen_since_ms.unwrap_or(now);
    if node.unseen_since_ms.is_none() || node.healthy_since_ms.is_some() {
        decision.actions.push(Action::Settling {
            node: name.clone(),
            healthy_since_ms: None,
            unseen_since_ms: Some(since),
        });
    }
    let what = health.unseen.join("; ");
    if elapsed(Some(since), now, unseen_limit) {
        decision.actions.push(Action::Fail {
            node: name,
            from: Step::Settle,
            reason: format!(
                "could not watch the node settle for {}s: {what}",
                unseen_limit.as_secs()
            ),
            roll_back: true,
        });
    } else {
        decision.block(&name, format!("settling held: waiting for {what}"));
    }
}

fn waited(reason: &str, node: &NodeProgress, now_ms: i64) -> StepOutcome {
    let since = node.step_started_ms.unwrap_or(now_ms);
    StepOutcome {
        waits: vec![(reason.to_string(), (now_ms - since).max(0) as u64)],
        ..Default::default()
    }
}
