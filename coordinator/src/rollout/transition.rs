//! Applies an [`Action`] to the rollout's record: the one place that says
//! what each decision changes. Pure; the engine saves the result before it
//! acts on it. An action that no longer fits the record (a step it says the
//! node is at but the node has left) changes nothing.

use super::action::Action;
use super::state::{Phase, Step};
use crate::store::{NodeProgress, RolloutRecord};

/// Applies `action` at `now_ms`; returns the nodes it changed.
pub fn apply(rollout: &mut RolloutRecord, action: &Action, now_ms: i64) -> Vec<String> {
    match action {
        Action::Start { nodes, binaries } => {
            rollout.batches_started += 1;
            let batch = rollout.batches_started;
            for (name, binary) in nodes.iter().zip(binaries) {
                let Some(node) = find(rollout, name).filter(|n| n.step == Step::Pending) else {
                    continue;
                };
                node.batch = batch;
                node.attempt += 1;
                node.started_ms.get_or_insert(now_ms);
                node.failure.clear();
                if node.from_sha256.is_empty() {
                    node.from_sha256 = binary.clone();
                }
                enter(node, Step::PreCheck, now_ms);
            }
            nodes.clone()
        }
        Action::Pass {
            node,
            from,
            outcome,
        } => {
            let Some(n) = find(rollout, node).filter(|n| n.step == *from) else {
                return Vec::new();
            };
            for (reason, millis) in &outcome.waits {
                *n.waits.entry(reason.clone()).or_default() += millis;
            }
            if let Some(snapshot) = &outcome.snapshot {
                n.snapshot = snapshot.clone();
            }
            if let Some(ours) = outcome.cordon_ours {
                n.was_unschedulable = Some(!ours);
                n.cordoned_by_us = ours;
            }
            if *from == Step::Uncordon {
                n.cordoned_by_us = false;
            }
            let next = from.next(n.server);
            enter(n, next, now_ms);
            if next == Step::Done {
                n.finished_ms = Some(now_ms);
            }
            vec![node.clone()]
        }
        Action::Run(key) => match find(rollout, &key.node) {
            Some(n) if !n.dispatched => {
                n.dispatched = true;
                vec![key.node.clone()]
            }
            _ => Vec::new(),
        },
        Action::Backoff {
            node,
            from,
            retries,
            at_ms,
            ..
        } => {
            let Some(n) = find(rollout, node).filter(|n| n.step == *from) else {
                return Vec::new();
            };
            n.retries = *retries;
            n.retry_at_ms = Some(*at_ms);
            n.dispatched = false;
            vec![node.clone()]
        }
        Action::Fail {
            node,
            from,
            reason,
            roll_back,
        } => {
            let Some(n) = find(rollout, node).filter(|n| n.step == *from) else {
                return Vec::new();
            };
            n.failure = format!("{} failed: {reason}", from.as_str());
            let failure = n.failure.clone();
            if *roll_back {
                enter(n, Step::RollBack, now_ms);
            } else {
                enter(n, Step::Failed, now_ms);
            }
            pause_for(rollout, node, &failure, *roll_back);
            vec![node.clone()]
        }
        Action::RolledBack { node, note } => {
            let Some(n) = find(rollout, node).filter(|n| n.step == Step::RollBack) else {
                return Vec::new();
            };
            n.failure = format!("{}; {note}", n.failure);
            let failure = n.failure.clone();
            enter(n, Step::Failed, now_ms);
            pause_for(rollout, node, &failure, false);
            vec![node.clone()]
        }
        Action::Settling {
            node,
            healthy_since_ms,
            unseen_since_ms,
        } => {
            let Some(n) = find(rollout, node).filter(|n| n.step == Step::Settle) else {
                return Vec::new();
            };
            n.healthy_since_ms = *healthy_since_ms;
            n.unseen_since_ms = *unseen_since_ms;
            vec![node.clone()]
        }
        Action::AlertHold { since_ms } => {
            rollout.alert_hold_since_ms = *since_ms;
            Vec::new()
        }
        Action::LonghornHold { since_ms } => {
            rollout.longhorn_hold_since_ms = *since_ms;
            Vec::new()
        }
        Action::Stop { node } => {
            let Some(n) = find(rollout, node).filter(|n| n.step.is_in_flight()) else {
                return Vec::new();
            };
            enter(n, Step::Aborted, now_ms);
            n.finished_ms = Some(now_ms);
            vec![node.clone()]
        }
        Action::Released { node, .. } => {
            let Some(n) = find(rollout, node) else {
                return Vec::new();
            };
            n.cordoned_by_us = false;
            n.retries = 0;
            n.retry_at_ms = None;
            n.dispatched = false;
            vec![node.clone()]
        }
        Action::Pause { reason } => {
            if rollout.phase == Phase::Running {
                rollout.phase = Phase::Paused;
                rollout.pause_reason = reason.clone();
            }
            Vec::new()
        }
        Action::Complete => {
            rollout.phase = Phase::Completed;
            rollout.finished_at_ms = Some(now_ms);
            Vec::new()
        }
        Action::FinishAbort => {
            rollout.phase = Phase::Aborted;
            rollout.finished_at_ms = Some(now_ms);
            rollout
                .nodes
                .iter_mut()
                .filter(|n| n.step == Step::Pending)
                .map(|n| {
                    n.step = Step::Aborted;
                    n.node.clone()
                })
                .collect()
        }
    }
}

fn find<'a>(rollout: &'a mut RolloutRecord, node: &str) -> Option<&'a mut NodeProgress> {
    rollout.nodes.iter_mut().find(|n| n.node == node)
}

/// The node enters `step` now: a fresh try with nothing sent yet.
fn enter(node: &mut NodeProgress, step: Step, now_ms: i64) {
    node.step = step;
    node.step_started_ms = Some(now_ms);
    node.dispatched = false;
    node.retries = 0;
    node.retry_at_ms = None;
    node.healthy_since_ms = None;
    node.unseen_since_ms = None;
}

/// A failed node pauses a running rollout, saying why.
fn pause_for(rollout: &mut RolloutRecord, node: &str, failure: &str, rolling_back: bool) {
    if rollout.phase == Phase::Running {
        rollout.phase = Phase::Paused;
    }
    if rollout.phase == Phase::Paused {
        rollout.pause_reason = if rolling_back {
            format!("{node} {failure}; rolling it back")
        } else {
            format!("{node} {failure}")
        };
    }
}

/// What a loaded record needs before this process decides on it: settle
/// holds seen by another process do not count, and a step entered by an
/// older coordinator that did not record when counts from now.
pub fn on_load(rollout: &mut RolloutRecord, now_ms: i64) {
    for node in &mut rollout.nodes {
        node.healthy_since_ms = None;
        node.unseen_since_ms = None;
        if node.step.is_in_flight() && node.step_started_ms.is_none() {
            node.step_started_ms = Some(now_ms);
        }
    }
}
