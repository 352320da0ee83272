//! What the decision asks for, and what executors report back: plain data
//! between the pure core ([`super::decide`], [`super::transition`]) and the
//! parts that touch the world ([`super::execute`], [`super::engine`]).

use std::fmt;

use super::state::Step;

/// An operation with side effects, carried out by an executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Snapshot,
    Cordon,
    Drain,
    Install,
    Uncordon,
    RollBack,
    /// Lifting k3sfleet's cordon of a node that stopped (skipped, aborted,
    /// or failed while the rollout aborts).
    Release,
}

impl Op {
    /// The operation a node's step runs, if the step is one.
    pub fn of_step(step: Step) -> Option<Op> {
        match step {
            Step::Snapshot => Some(Op::Snapshot),
            Step::Cordon => Some(Op::Cordon),
            Step::Drain => Some(Op::Drain),
            Step::Install => Some(Op::Install),
            Step::Uncordon => Some(Op::Uncordon),
            Step::RollBack => Some(Op::RollBack),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Snapshot => "snapshot",
            Op::Cordon => "cordon",
            Op::Drain => "drain",
            Op::Install => "install",
            Op::Uncordon => "uncordon",
            Op::RollBack => "rollback",
            Op::Release => "release",
        }
    }
}

/// One try of one operation on one node. Its results are applied only while
/// the node is still at that try; anything else is a stale answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpKey {
    pub rollout: i64,
    pub node: String,
    pub op: Op,
    pub attempt: u32,
    pub retry: u32,
}

impl OpKey {
    /// The agent command id for this try: the same try gets the same id, so
    /// a restarted coordinator re-sending it gets the agent's earlier result
    /// instead of a second run; a retry after a passing failure gets a new
    /// one, or it would only replay that failure.
    pub fn command_id(&self) -> String {
        let id = format!(
            "rollout-{}-{}-{}-{}",
            self.rollout,
            self.node,
            self.op.as_str(),
            self.attempt
        );
        match self.retry {
            0 => id,
            retry => format!("{id}.{retry}"),
        }
    }
}

impl fmt::Display for OpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_id())
    }
}

/// What a finished step learned, saved with the move to the next step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Milliseconds waited, by reason.
    pub waits: Vec<(String, u64)>,
    pub snapshot: Option<String>,
    /// For a cordon: whether the cordon is k3sfleet's (to be lifted at the end).
    pub cordon_ours: Option<bool>,
    /// A note for the audit log ("left cordoned: an operator cordoned it again").
    pub note: Option<String>,
}

/// Why an operation failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    pub message: String,
    pub retryable: bool,
}

impl OpFailure {
    pub fn retryable(message: impl Into<String>) -> Self {
        OpFailure {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        OpFailure {
            message: message.into(),
            retryable: false,
        }
    }
}

/// An executor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    pub key: OpKey,
    pub outcome: Result<StepOutcome, OpFailure>,
}

/// A change the decision asks for. Each is applied to the rollout record
/// and saved before anything it leads to is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Begin these nodes' upgrades together, as one batch.
    Start {
        nodes: Vec<String>,
        /// Each node's binary as its agent reports it now: what a rollback returns to.
        binaries: Vec<String>,
    },
    /// The node's step (`from`) is done: move to the next one.
    Pass {
        node: String,
        from: Step,
        outcome: StepOutcome,
    },
    /// Carry out the node's operation (recorded as sent before it is).
    Run(OpKey),
    /// A passing failure: try again after `at_ms`.
    Backoff {
        node: String,
        from: Step,
        retries: u32,
        at_ms: i64,
        reason: String,
    },
    /// The node failed; with `roll_back`, its agent puts the old K3s back first.
    Fail {
        node: String,
        from: Step,
        reason: String,
        roll_back: bool,
    },
    /// A rollback ended: the node is failed, with what the rollback did.
    RolledBack {
        node: String,
        note: String,
    },
    /// The settle hold, as now seen.
    Settling {
        node: String,
        healthy_since_ms: Option<i64>,
        unseen_since_ms: Option<i64>,
    },
    /// Alerts began (Some) or stopped (None) holding new nodes back.
    AlertHold {
        since_ms: Option<i64>,
    },
    /// Longhorn's rebuilds began (Some) or stopped (None) keeping every node
    /// from starting.
    LonghornHold {
        since_ms: Option<i64>,
    },
    /// Aborting: the node stops where it is.
    Stop {
        node: String,
    },
    /// k3sfleet's cordon of a stopped node is lifted.
    Released {
        node: String,
        note: Option<String>,
    },
    Pause {
        reason: String,
    },
    Complete,
    /// Aborting is done: every node under way stopped, cordons lifted.
    FinishAbort,
}
