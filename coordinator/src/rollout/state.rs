//! The states of a rollout and of each node in it, as data.
//!
//! Every change is written to the database before the action it starts; a
//! restarted coordinator re-enters each node at its recorded step, and every
//! step is safe to run again.

use serde::{Deserialize, Serialize};

/// Where one node is in its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Not started yet.
    Pending,
    /// Agent connected and healthy; for a server, every server Ready and every
    /// etcd member healthy.
    PreCheck,
    /// Servers only: an etcd snapshot to roll back to.
    Snapshot,
    /// Mark unschedulable, remembering whether it already was.
    Cordon,
    /// Evict its pods through the Eviction API.
    Drain,
    /// The agent installs the new K3s and restarts it.
    Install,
    /// Ready in Kubernetes with the new kubelet version, and the agent reports it.
    WaitReady,
    /// Held healthy for the settle period.
    Settle,
    /// Schedulable again, if k3sfleet cordoned it.
    Uncordon,
    Done,
    /// A step after the install failed: the agent puts the old binary back,
    /// then the node is failed.
    RollBack,
    /// A step failed; the rollout paused.
    Failed,
    /// The operator chose to leave this node out.
    Skipped,
    /// The rollout was aborted before this node finished.
    Aborted,
}

impl Step {
    pub const ALL: [Step; 14] = [
        Step::Pending,
        Step::PreCheck,
        Step::Snapshot,
        Step::Cordon,
        Step::Drain,
        Step::Install,
        Step::WaitReady,
        Step::Settle,
        Step::Uncordon,
        Step::Done,
        Step::RollBack,
        Step::Failed,
        Step::Skipped,
        Step::Aborted,
    ];

    /// The step after this one succeeds, for a server or a worker.
    pub fn next(self, server: bool) -> Step {
        match self {
            Step::Pending => Step::PreCheck,
            Step::PreCheck if server => Step::Snapshot,
            Step::PreCheck => Step::Cordon,
            Step::Snapshot => Step::Cordon,
            Step::Cordon => Step::Drain,
            Step::Drain => Step::Install,
            Step::Install => Step::WaitReady,
            Step::WaitReady => Step::Settle,
            Step::Settle => Step::Uncordon,
            Step::Uncordon => Step::Done,
            Step::RollBack => Step::Failed,
            terminal => terminal,
        }
    }

    /// The node has nothing more to do in this rollout.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Step::Done | Step::Failed | Step::Skipped | Step::Aborted
        )
    }

    /// The node is being worked on: cordoned or about to be, K3s in flux.
    pub fn is_in_flight(self) -> bool {
        !self.is_terminal() && self != Step::Pending
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pending => "pending",
            Step::PreCheck => "pre_check",
            Step::Snapshot => "snapshot",
            Step::Cordon => "cordon",
            Step::Drain => "drain",
            Step::Install => "install",
            Step::WaitReady => "wait_ready",
            Step::Settle => "settle",
            Step::Uncordon => "uncordon",
            Step::Done => "done",
            Step::RollBack => "roll_back",
            Step::Failed => "failed",
            Step::Skipped => "skipped",
            Step::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.as_str() == text)
    }
}

/// Whether a node may begin `step` while the rollout is in `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Proceed,
    /// Paused: wait before this step, the node stays as it is.
    Wait,
    /// Aborting: stop here; k3sfleet's cordon will be lifted.
    Stop,
}

/// Pausing holds every step that changes a node or starts one; the checks
/// after an install still run, so a node mid-upgrade returns to service,
/// and so does a rollback. Aborting stops nodes before their install; nodes
/// past it finish.
pub fn gate(phase: Phase, step: Step) -> Gate {
    let after_install = matches!(
        step,
        Step::WaitReady | Step::Settle | Step::Uncordon | Step::RollBack
    );
    match phase {
        Phase::Running => Gate::Proceed,
        Phase::Paused if after_install => Gate::Proceed,
        Phase::Paused => Gate::Wait,
        Phase::Aborting | Phase::Aborted | Phase::Completed if after_install => Gate::Proceed,
        Phase::Aborting | Phase::Aborted | Phase::Completed => Gate::Stop,
    }
}

/// Where the whole rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// No new node starts and no node takes a further disruptive step.
    Paused,
    /// Stopping: nodes under way stop at a safe point, k3sfleet's cordons are lifted.
    Aborting,
    Aborted,
    Completed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Aborting => "aborting",
            Phase::Aborted => "aborted",
            Phase::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        [
            Phase::Running,
            Phase::Paused,
            Phase::Aborting,
            Phase::Aborted,
            Phase::Completed,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Aborted | Phase::Completed)
    }
}

/// What an operator may ask of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
    Retry(String),
    Skip(String),
}

/// Attempts a node gets (first run plus retries) before only skip or abort remain.
pub const MAX_ATTEMPTS: u32 = 3;

/// Why an operator's request cannot be done now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The part of a node's record the operator's decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub step: Step,
    pub attempt: u32,
    pub failure: Option<&'a str>,
}

/// The rollout phase after `control`, given the nodes; or why not. Node
/// changes (retry, skip) are the caller's to apply when this allows them.
pub fn apply_control(
    phase: Phase,
    control: &Control,
    nodes: &[NodeView<'_>],
) -> Result<Phase, Refused> {
    if phase.is_finished() {
        return Err(Refused(format!(
            "the rollout is {} already",
            phase.as_str()
        )));
    }
    let failed: Vec<&NodeView<'_>> = nodes.iter().filter(|n| n.step == Step::Failed).collect();
    let find = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Refused(format!("{name} is not part of this rollout")))
    };
    match control {
        Control::Pause if phase == Phase::Aborting => {
            Err(Refused("the rollout is aborting".into()))
        }
        Control::Pause => Ok(Phase::Paused),
        Control::Abort => Ok(Phase::Aborting),
        Control::Resume if phase == Phase::Aborting => {
            Err(Refused("an aborting rollout cannot resume".into()))
        }
        Control::Resume => match failed.first() {
            Some(node) => Err(Refused(format!(
                "{} failed ({}): retry it or skip it first",
                node.name,
                node.failure.unwrap_or("no reason recorded")
            ))),
            None => Ok(Phase::Running),
        },
        Control::Retry(name) => {
            let node = find(name)?;
            if node.step != Step::Failed {
                return Err(Refused(format!(
                    "{name} has not failed (it is {})",
                    node.step.as_str()
                )));
            }
            if node.attempt >= MAX_ATTEMPTS {
                return Err(Refused(format!(
                    "{name} failed {} times; skip it or abort the rollout",
                    node.attempt
                )));
            }
            Ok(resumed_after(phase, &failed, name))
        }
        Control::Skip(name) => {
            let node = find(name)?;
            if node.step.is_terminal() && node.step != Step::Failed {
                return Err(Refused(format!("{name} is {} already", node.step.as_str())));
            }
            if node.step.is_in_flight() {
                return Err(Refused(format!(
                    "{name} is under way ({}); pause and wait for it, or abort",
                    node.step.as_str()
                )));
            }
            Ok(resumed_after(phase, &failed, name))
        }
    }
}

/// Retrying or skipping the last failed node resumes the rollout (skipping a
/// pending node of a rollout an operator paused does not).
fn resumed_after(phase: Phase, failed: &[&NodeView<'_>], handled: &str) -> Phase {
    let was_failed = failed.iter().any(|n| n.name == handled);
    let others_failed = failed.iter().any(|n| n.name != handled);
    if phase == Phase::Paused && was_failed && !others_failed {
        Phase::Running
    } else {
        phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_snapshot_before_cordoning_and_workers_do_not() {
        let walk = |server| {
            let mut steps = vec![Step::Pending];
            while !steps.last().unwrap().is_terminal() {
                steps.push(steps.last().unwrap().next(server));
            }
            steps
        };
        use Step::*;
        assert_eq!(
            walk(true),
            [
                Pending, PreCheck, Snapshot, Cordon, Drain, Install, WaitReady, Settle, Uncordon,
                Done
            ]
        );
        assert_eq!(
            walk(false),
            [
                Pending, PreCheck, Cordon, Drain, Install, WaitReady, Settle, Uncordon, Done
            ]
        );
    }

    #[test]
    fn terminal_steps_stay_put_and_names_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
            if step.is_terminal() {
                assert_eq!(step.next(true), step);
                assert!(!step.is_in_flight());
            }
        }
        assert!(!Step::Pending.is_in_flight());
        assert!(Step::Drain.is_in_flight());
    }

    fn node(name: &str, step: Step, attempt: u32) -> NodeView<'_> {
        NodeView {
            name,
            step,
            attempt,
            failure: (step == Step::Failed).then_some("install failed: k3s did not become active"),
        }
    }

    #[test]
    fn gates_hold_disruptive_steps_and_let_upgraded_nodes_finish() {
        use Step::*;
        for step in [PreCheck, Snapshot, Cordon, Drain, Install] {
            assert_eq!(gate(Phase::Running, step), Gate::Proceed);
            assert_eq!(gate(Phase::Paused, step), Gate::Wait, "{step:?}");
            assert_eq!(gate(Phase::Aborting, step), Gate::Stop, "{step:?}");
        }
        for step in [WaitReady, Settle, Uncordon, RollBack] {
            assert_eq!(gate(Phase::Paused, step), Gate::Proceed, "{step:?}");
            assert_eq!(gate(Phase::Aborting, step), Gate::Proceed, "{step:?}");
        }
    }

    #[test]
    fn pause_resume_abort() {
        let nodes = [node("worker-01", Step::Drain, 1)];
        assert_eq!(
            apply_control(Phase::Running, &Control::Pause, &nodes),
            Ok(Phase::Paused)
        );
        assert_eq!(
            apply_control(Phase::Paused, &Control::Resume, &nodes),
            Ok(Phase::Running)
        );
        assert_eq!(
            apply_control(Phase::Running, &Control::Abort, &nodes),
            Ok(Phase::Aborting)
        );
        assert!(apply_control(Phase::Aborting, &Control::Resume, &nodes).is_err());
        assert!(apply_control(Phase::Aborting, &Control::Pause, &nodes).is_err());
        for finished in [Phase::Completed, Phase::Aborted] {
            let err = apply_control(finished, &Control::Pause, &nodes).unwrap_err();
            assert!(err.0.contains(finished.as_str()), "{err}");
        }
    }

    #[test]
    fn resume_refuses_while_a_node_is_failed() {
        let nodes = [
            node("worker-03", Step::Failed, 1),
            node("worker-04", Step::Pending, 0),
        ];
        let err = apply_control(Phase::Paused, &Control::Resume, &nodes).unwrap_err();
        assert!(
            err.0.contains("worker-03") && err.0.contains("retry it or skip it"),
            "{err}"
        );
    }

    #[test]
    fn retry_and_skip_resume_once_no_failure_is_left() {
        let nodes = [
            node("worker-03", Step::Failed, 1),
            node("worker-05", Step::Failed, 1),
        ];
        // Another node still failed: stay paused.
        assert_eq!(
            apply_control(Phase::Paused, &Control::Retry("worker-03".into()), &nodes),
            Ok(Phase::Paused)
        );
        let nodes = [node("worker-03", Step::Failed, 1)];
        assert_eq!(
            apply_control(Phase::Paused, &Control::Retry("worker-03".into()), &nodes),
            Ok(Phase::Running)
        );
        assert_eq!(
            apply_control(Phase::Paused, &Control::Skip("worker-03".into()), &nodes),
            Ok(Phase::Running)
        );
    }

    #[test]
    fn skipping_a_pending_node_of_a_paused_rollout_keeps_it_paused() {
        let nodes = [node("worker-03", Step::Pending, 0)];
        assert_eq!(
            apply_control(Phase::Paused, &Control::Skip("worker-03".into()), &nodes),
            Ok(Phase::Paused)
        );
    }

    #[test]
    fn retries_stop_after_the_last_attempt() {
        let nodes = [node("worker-03", Step::Failed, MAX_ATTEMPTS)];
        let err =
            apply_control(Phase::Paused, &Control::Retry("worker-03".into()), &nodes).unwrap_err();
        assert!(err.0.contains("skip it or abort"), "{err}");
        // Skipping is always possible.
        assert_eq!(
            apply_control(Phase::Paused, &Control::Skip("worker-03".into()), &nodes),
            Ok(Phase::Running)
        );
    }

    #[test]
    fn only_failed_nodes_retry_and_busy_nodes_cannot_be_skipped() {
        let nodes = [
            node("worker-01", Step::Done, 1),
            node("worker-02", Step::Install, 1),
            node("worker-04", Step::Pending, 0),
        ];
        assert!(
            apply_control(Phase::Running, &Control::Retry("worker-01".into()), &nodes).is_err()
        );
        assert!(apply_control(Phase::Running, &Control::Skip("worker-01".into()), &nodes).is_err());
        assert!(apply_control(Phase::Running, &Control::Skip("worker-02".into()), &nodes).is_err());
        assert_eq!(
            apply_control(Phase::Running, &Control::Skip("worker-04".into()), &nodes),
            Ok(Phase::Running)
        );
        assert!(apply_control(Phase::Running, &Control::Skip("worker-99".into()), &nodes).is_err());
    }
}
