//! What the rollout does next: a pure function of the rollout's record, what
//! was observed, and the clock (inside [`Observed`]). No I/O, no clock
//! reads: every transition has a unit test below, and the simulation test
//! (`tests/rollout_sim.rs`) runs it through thousands of schedules.
//!
//! [`decide`] looks at every node and at the rollout as a whole; [`on_result`]
//! reads an executor's report. Both return [`Action`]s, which
//! [`super::transition`] applies to the record; the engine saves the record
//! and only then carries out the operations they ask for.

use std::collections::BTreeMap;
use std::time::Duration;

mod schedule;
mod steps;

use super::action::{Action, Op, OpKey, OpResult};
use super::observed::Observed;
use super::settings::EngineSettings;
use super::state::{Gate, Phase, Step, gate};
use crate::drain::Owner;
use crate::store::{NodeProgress, RolloutRecord};

use schedule::schedule;
pub use schedule::{DEFAULT_LONGHORN_TIMEOUT, wants_alerts, wants_budgets, wants_longhorn};
use steps::{pre_check, settle, wait_ready};

/// Defaults when the rollout's options leave them at zero.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

/// What to do now, and what holds each node up (for the status view; "" is
/// the rollout's own).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub blockers: BTreeMap<String, String>,
}

impl Decision {
    fn block(&mut self, key: &str, text: impl Into<String>) {
        self.blockers.insert(key.to_string(), text.into());
    }
}

fn seconds_or(seconds: u32, default: Duration) -> Duration {
    match seconds {
        0 => default,
        seconds => Duration::from_secs(u64::from(seconds)),
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Whether `for_ms` has passed since `since_ms` at `now_ms`.
fn elapsed(since_ms: Option<i64>, now_ms: i64, limit: Duration) -> bool {
    since_ms.is_some_and(|since| now_ms.saturating_sub(since) >= millis(limit))
}

fn secs(ms: i64) -> i64 {
    ms.max(0) / 1000
}

/// The try of `op` the node is at.
pub fn key(rollout: &RolloutRecord, node: &NodeProgress, op: Op) -> OpKey {
    OpKey {
        rollout: rollout.id,
        node: node.node.clone(),
        op,
        attempt: node.attempt,
        retry: node.retries,
    }
}

pub fn decide(rollout: &RolloutRecord, seen: &Observed, settings: &EngineSettings) -> Decision {
    let mut decision = Decision::default();
    if rollout.phase.is_finished() {
        return decision;
    }
    for node in &rollout.nodes {
        node_actions(rollout, node, seen, settings, &mut decision);
    }
    match rollout.phase {
        Phase::Running => schedule(rollout, seen, &mut decision),
        Phase::Aborting => finish_abort(rollout, seen, &mut decision),
        Phase::Paused | Phase::Aborted | Phase::Completed => {}
    }
    decision
}

/// Whether k3sfleet's cordon of this node is still to be lifted: the node
/// carries this rollout's claim, or (when the nodes cannot be read) the
/// record says it cordoned the node.
fn holds_cordon(rollout: &RolloutRecord, node: &NodeProgress, seen: &Observed) -> bool {
    match &seen.nodes {
        Ok(nodes) => nodes.get(&node.node).is_some_and(|state| {
            state
                .claim()
                .is_some_and(|claim| claim.owner == Owner::Rollout(rollout.id as u64))
        }),
        Err(_) => node.cordoned_by_us,
    }
}

fn node_actions(
    rollout: &RolloutRecord,
    node: &NodeProgress,
    seen: &Observed,
    settings: &EngineSettings,
    decision: &mut Decision,
) {
    let now = seen.now_ms;
    let name = node.node.as_str();
    let running = seen.running.get(name);
    let backing_off = node.retry_at_ms.filter(|at| *at > now);
    let aborting = rollout.phase == Phase::Aborting;
    let stopped = match node.step {
        // A retried node waits cordoned; an abort lifts that cordon.
        Step::Pending if !aborting => return,
        Step::Pending => true,
        Step::Done | Step::Skipped | Step::Aborted => true,
        Step::Failed => aborting,
        _ => false,
    };
    if node.step.is_terminal() || node.step == Step::Pending {
        if !stopped || running.is_some() {
            return;
        }
        if holds_cordon(rollout, node, seen) {
            match backing_off {
                Some(at) => decision.block(
                    name,
                    format!("lifting k3sfleet's cordon again in {}s", secs(at - now)),
                ),
                None => decision
                    .actions
                    .push(Action::Run(key(rollout, node, Op::Release))),
            }
        } else if node.cordoned_by_us && seen.nodes.is_ok() {
            // Schedulable again without us: someone uncordoned it.
            decision.actions.push(Action::Released {
                node: name.to_string(),
                note: Some("someone else made it schedulable".into()),
            });
        }
        return;
    }

    // An install that may have been sent finishes even when aborting: the
    // agent must not be left mid-swap without anyone watching.
    let resumed_install = node.step == Step::Install && node.dispatched;
    match gate(rollout.phase, node.step) {
        Gate::Stop if resumed_install => {}
        // Only a drain is stopped in the middle: every other operation is
        // short, and cut off it could leave a change nobody recorded.
        Gate::Stop if running.is_some_and(|key| key.op != Op::Drain) => return,
        Gate::Stop => {
            decision.actions.push(Action::Stop {
                node: name.to_string(),
            });
            return;
        }
        Gate::Wait if running.is_none() => {
            decision.block(name, "the rollout is paused");
            return;
        }
        Gate::Wait | Gate::Proceed => {}
    }
    if running.is_some() {
        return;
    }
    if let Some(at) = backing_off {
        decision.block(
            name,
            format!(
                "{} failed for now; try {} in {}s",
                node.step.as_str(),
                node.retries + 1,
                secs(at - now)
            ),
        );
        return;
    }
    match node.step {
        Step::PreCheck => pre_check(rollout, node, seen, settings, decision),
        Step::WaitReady => wait_ready(rollout, node, seen, decision),
        Step::Settle => settle(rollout, node, seen, decision),
        Step::Drain if !batch_cordoned(rollout, node) => {
            decision.block(name, "waiting for the rest of its batch to be cordoned")
        }
        step => {
            if let Some(op) = Op::of_step(step) {
                decision.actions.push(Action::Run(key(rollout, node, op)));
            }
        }
    }
}

/// Nodes started together are all cordoned before any of them drains, so a
/// pod evicted from one cannot land on another about to be drained.
fn batch_cordoned(rollout: &RolloutRecord, node: &NodeProgress) -> bool {
    rollout
        .nodes
        .iter()
        .filter(|other| other.batch == node.batch && other.node != node.node)
        .all(|other| other.step.is_terminal() || other.step > Step::Cordon)
}

/// Lifts k3sfleet's cordons to be lifted first; then, while nothing is
/// under way, the rollout is aborted.
fn finish_abort(rollout: &RolloutRecord, seen: &Observed, decision: &mut Decision) {
    // Which cordons are k3sfleet's is read on the nodes: not knowing, wait.
    if let Err(err) = &seen.nodes {
        decision.block("", format!("aborting: cannot read the nodes: {err}"));
        return;
    }
    let busy = rollout.nodes.iter().any(|n| {
        n.step.is_in_flight()
            || seen.running.contains_key(&n.node)
            || holds_cordon(rollout, n, seen)
            || n.cordoned_by_us
    });
    if !busy {
        decision.actions.push(Action::FinishAbort);
    } else {
        decision.block("", "aborting: waiting for the nodes under way to stop");
    }
}

/// What an executor's report means for the rollout. A report for a try the
/// node is no longer at (a cancelled drain, an answer from before a
/// restart's retry) changes nothing.
pub fn on_result(
    rollout: &RolloutRecord,
    result: &OpResult,
    settings: &EngineSettings,
    now_ms: i64,
) -> Vec<Action> {
    let Some(node) = rollout.nodes.iter().find(|n| n.node == result.key.node) else {
        return Vec::new();
    };
    let current = match result.key.op {
        Op::Release => (node.step.is_terminal() || node.step == Step::Pending).then_some(node.step),
        op => Some(node.step).filter(|step| Op::of_step(*step) == Some(op)),
    };
    let Some(step) = current else {
        return Vec::new();
    };
    if result.key != key(rollout, node, result.key.op) {
        return Vec::new();
    }
    let name = node.node.clone();
    match (&result.outcome, result.key.op) {
        (Ok(outcome), Op::Release) => vec![Action::Released {
            node: name,
            note: outcome.note.clone(),
        }],
        (Ok(outcome), Op::RollBack) => vec![Action::RolledBack {
            node: name,
            note: format!(
                "rolled back: {}",
                outcome.note.as_deref().unwrap_or("the old binary runs")
            ),
        }],
        (Ok(outcome), _) => vec![Action::Pass {
            node: name,
            from: step,
            outcome: outcome.clone(),
        }],
        // Lifting a cordon is retried until it works, however long: the
        // node must not stay cordoned, and nothing else waits on it.
        (Err(failure), Op::Release) => vec![Action::Backoff {
            node: name,
            from: step,
            retries: node.retries + 1,
            at_ms: now_ms + millis(settings.backoff(node.retries + 1)),
            reason: failure.message.clone(),
        }],
        (Err(failure), _) if failure.retryable && node.retries < settings.step_retries => {
            vec![Action::Backoff {
                node: name,
                from: step,
                retries: node.retries + 1,
                at_ms: now_ms + millis(settings.backoff(node.retries + 1)),
                reason: failure.message.clone(),
            }]
        }
        (Err(failure), Op::RollBack) => vec![Action::RolledBack {
            node: name,
            note: format!("rollback failed: {}", failure.message),
        }],
        (Err(failure), _) => vec![Action::Fail {
            node: name,
            from: step,
            reason: failure.message.clone(),
            roll_back: false,
        }],
    }
}

#[cfg(test)]
mod tests;
