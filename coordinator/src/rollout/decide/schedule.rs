//! Which nodes start now, in a running rollout: servers first, one at a
//! time, then workers as slots free up and the PodDisruptionBudgets and
//! Longhorn's volumes allow; or the rollout completes. Held while outside
//! the maintenance windows or while alerts fire.

use std::time::Duration;

use super::{Decision, elapsed, holds_cordon, seconds_or, secs};
use crate::longhorn::LonghornView;
use crate::longhorn::rules::{Hold, holds};
use crate::rollout::action::Action;
use crate::rollout::alerts::DEFAULT_HOLD_TIMEOUT;
use crate::rollout::cluster::ClusterError;
use crate::rollout::observed::Observed;
use crate::rollout::planner::{MaxUnavailable, admit_where};
use crate::rollout::state::{Phase, Step};
use crate::rollout::window::{self, MaintenanceWindow};
use crate::store::{NodeProgress, RolloutRecord};

/// How long Longhorn's rebuilds may keep every node from starting before
/// the rollout pauses naming the volumes, when not given.
pub const DEFAULT_LONGHORN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(super) fn schedule(rollout: &RolloutRecord, seen: &Observed, decision: &mut Decision) {
    // Who holds which cordon must be known before anyone starts or the
    // rollout ends.
    if let Err(err) = &seen.nodes {
        decision.block("", format!("cannot read the nodes: {err}"));
        return;
    }
    if rollout.nodes.iter().all(|n| n.step.is_terminal()) {
        let releasing = rollout
            .nodes
            .iter()
            .any(|n| holds_cordon(rollout, n, seen) || n.cordoned_by_us);
        if !releasing {
            decision.actions.push(Action::Complete);
        }
        return;
    }
    let pending: Vec<&NodeProgress> = rollout
        .nodes
        .iter()
        .filter(|n| n.step == Step::Pending)
        .collect();
    if pending.is_empty() || outside_windows(rollout, seen, decision) {
        return;
    }
    if alerts_hold(rollout, seen, decision) {
        return;
    }
    let longhorn = match &seen.longhorn {
        Some(Ok(view)) => view.as_ref(),
        Some(Err(err)) => {
            held_by_read_error(decision, format!("cannot read Longhorn: {err}"), err);
            return;
        }
        // Not read this round: nothing may start blind.
        None => return,
    };
    let fleet = Fleet::of(rollout, seen);
    let held = match start_server(rollout, seen, &fleet, longhorn, decision) {
        ServerTurn::Done => return,
        ServerTurn::Held(held) => held,
        ServerTurn::ServersFinished => {
            match start_workers(rollout, seen, &fleet, longhorn, decision) {
                Some(held) => held,
                None => return,
            }
        }
    };
    longhorn_hold(rollout, seen, longhorn, &held, decision);
}

/// A read that may pass holds new nodes back; one that will keep failing
/// (403: the coordinator's RBAC) pauses the rollout with the reason.
fn held_by_read_error(decision: &mut Decision, reason: String, err: &ClusterError) {
    if err.retryable {
        decision.block("", reason);
    } else {
        decision.actions.push(Action::Pause { reason });
    }
}

/// Where the rollout's nodes stand, as starting more nodes needs to know.
struct Fleet<'a> {
    pending: Vec<&'a NodeProgress>,
    /// Out of service: under way, or still cordoned by this rollout (a
    /// failed node being retried waits cordoned, a stopped one until its
    /// cordon is lifted).
    out: Vec<String>,
    cordoned: Vec<String>,
}

impl<'a> Fleet<'a> {
    fn of(rollout: &'a RolloutRecord, seen: &Observed) -> Fleet<'a> {
        let cordoned: Vec<String> = rollout
            .nodes
            .iter()
            .filter(|n| n.cordoned_by_us || holds_cordon(rollout, n, seen))
            .map(|n| n.node.clone())
            .collect();
        let out = rollout
            .nodes
            .iter()
            .filter(|n| n.step.is_in_flight() || cordoned.contains(&n.node))
            .map(|n| n.node.clone())
            .collect();
        Fleet {
            pending: rollout
                .nodes
                .iter()
                .filter(|n| n.step == Step::Pending)
                .collect(),
            out,
            cordoned,
        }
    }

    fn is_cordoned(&self, node: &str) -> bool {
        self.cordoned.iter().any(|n| n == node)
    }
}

/// What Longhorn holds `node` back for, beside the nodes `out`.
fn longhorn_holds(longhorn: Option<&LonghornView>, node: &str, out: &[String]) -> Vec<Hold> {
    longhorn.map_or_else(Vec::new, |view| holds(view, node, out))
}

enum ServerTurn {
    /// A server started, or one is still under way: nothing more this round.
    Done,
    /// The next server waits on Longhorn.
    Held(Vec<Hold>),
    /// Every server is through: workers may go.
    ServersFinished,
}

/// Servers first, one at a time, all of them before any worker; a server
/// still cordoned (retried after a failure) goes before the others.
fn start_server(
    rollout: &RolloutRecord,
    seen: &Observed,
    fleet: &Fleet<'_>,
    longhorn: Option<&LonghornView>,
    decision: &mut Decision,
) -> ServerTurn {
    let server_out = rollout.nodes.iter().any(|n| {
        n.server
            && (n.step.is_in_flight() || (n.step != Step::Pending && fleet.is_cordoned(&n.node)))
    });
    if server_out {
        return ServerTurn::Done;
    }
    let next = fleet
        .pending
        .iter()
        .filter(|n| n.server)
        .min_by_key(|n| !fleet.is_cordoned(&n.node));
    if let Some(server) = next {
        let held = longhorn_holds(longhorn, &server.node, &fleet.out);
        if held.is_empty() {
            start(&[server], seen, decision);
            return ServerTurn::Done;
        }
        if let Some(view) = longhorn {
            block_on_longhorn(view, &server.node, &held, decision);
        }
        return ServerTurn::Held(held);
    }
    if rollout
        .nodes
        .iter()
        .any(|n| n.server && !n.step.is_terminal())
    {
        return ServerTurn::Done;
    }
    ServerTurn::ServersFinished
}

/// Workers as slots free up: at most max-unavailable out of service, and
/// only those the budgets and Longhorn let go beside the ones still
/// draining. Returns what Longhorn held back, or `None` when this round
/// cannot tell (budgets unread).
fn start_workers(
    rollout: &RolloutRecord,
    seen: &Observed,
    fleet: &Fleet<'_>,
    longhorn: Option<&LonghornView>,
    decision: &mut Decision,
) -> Option<Vec<Hold>> {
    let workers: Vec<&NodeProgress> = rollout.nodes.iter().filter(|n| !n.server).collect();
    let max = match rollout.options.max_unavailable.parse::<MaxUnavailable>() {
        Ok(max) => max.resolve(workers.len()),
        Err(err) => {
            decision.actions.push(Action::Pause { reason: err });
            return None;
        }
    };
    let returning: Vec<&NodeProgress> = fleet
        .pending
        .iter()
        .filter(|n| !n.server && fleet.is_cordoned(&n.node))
        .copied()
        .collect();
    let under_way = workers
        .iter()
        .filter(|n| fleet.out.contains(&n.node) && n.step != Step::Pending)
        .count();
    let free = max.saturating_sub(under_way + returning.len());
    if free == 0 && returning.is_empty() {
        return Some(Vec::new());
    }
    let budgets = match &seen.budgets {
        Some(Ok(budgets)) => budgets,
        Some(Err(err)) => {
            held_by_read_error(
                decision,
                format!("cannot read the PodDisruptionBudgets: {err}"),
                err,
            );
            return None;
        }
        None => return None,
    };

    let mut healthy_returning = Vec::new();
    let mut healthy = Vec::new();
    let mut unhealthy = Vec::new();
    for node in fleet.pending.iter().filter(|n| !n.server) {
        if seen.draining.contains(&node.node) {
            decision.block(&node.node, "an operator is draining it; waiting for that");
            continue;
        }
        let problems = seen.node_problems(&node.node);
        if problems.is_empty() && fleet.is_cordoned(&node.node) {
            healthy_returning.push(node.node.clone());
        } else if problems.is_empty() {
            healthy.push(node.node.clone());
        } else {
            decision.block(
                &node.node,
                format!("not ready to start: {}", problems.join("; ")),
            );
            unhealthy.push(*node);
        }
    }
    let mut draining: Vec<String> = workers
        .iter()
        .filter(|n| n.step.is_in_flight() && n.step <= Step::Drain)
        .map(|n| n.node.clone())
        .collect();
    let mut held: Vec<Hold> = Vec::new();
    let mut held_nodes: Vec<(String, Vec<Hold>)> = Vec::new();
    let mut may_join = |node: &str, admitted: &[String]| {
        let mut out = fleet.out.clone();
        out.extend(admitted.iter().cloned());
        let holds = longhorn_holds(longhorn, node, &out);
        if holds.is_empty() {
            return true;
        }
        held.extend(holds.iter().cloned());
        held_nodes.push((node.to_string(), holds));
        false
    };
    let mut admitted = admit_where(
        &healthy_returning,
        &draining,
        budgets,
        healthy_returning.len(),
        &mut may_join,
    );
    draining.extend(admitted.iter().cloned());
    let more = admit_where(&healthy, &draining, budgets, free, |node, so_far| {
        let mut all = admitted.clone();
        all.extend(so_far.iter().cloned());
        may_join(node, &all)
    });
    admitted.extend(more);
    if let Some(view) = longhorn {
        for (node, holds) in &held_nodes {
            block_on_longhorn(view, node, holds, decision);
        }
    }
    let chosen: Vec<&NodeProgress> = admitted
        .iter()
        .filter_map(|name| fleet.pending.iter().find(|n| n.node == *name).copied())
        .collect();
    let in_flight = under_way + returning.len();
    if !chosen.is_empty() {
        start(&chosen, seen, decision);
        return Some(Vec::new());
    }
    if in_flight == 0 && healthy.is_empty() && held.is_empty() {
        // Nobody is fit to start: start one anyway, so its pre-check names
        // what is wrong and, if it lasts, fails and pauses the rollout.
        if let Some(first) = unhealthy.first() {
            start(&[first], seen, decision);
        }
    } else if held.is_empty() && !healthy.is_empty() {
        decision.block(
            "",
            format!(
                "{} waiting: the PodDisruptionBudgets allow none of them beside the nodes draining now",
                healthy.len()
            ),
        );
    }
    // Only a rollout with nothing under way is held by Longhorn as a whole.
    Some(if in_flight == 0 { held } else { Vec::new() })
}

fn block_on_longhorn(view: &LonghornView, node: &str, holds: &[Hold], decision: &mut Decision) {
    let reasons: Vec<String> = holds.iter().map(|h| h.describe(view)).collect();
    decision.block(node, format!("waiting: {}", reasons.join("; ")));
}

/// While Longhorn keeps every node from starting: how long, and the pause
/// once it lasts too long, naming the volumes.
fn longhorn_hold(
    rollout: &RolloutRecord,
    seen: &Observed,
    longhorn: Option<&LonghornView>,
    held: &[Hold],
    decision: &mut Decision,
) {
    let now = seen.now_ms;
    let Some(view) = longhorn.filter(|_| !held.is_empty()) else {
        if rollout.longhorn_hold_since_ms.is_some() {
            decision
                .actions
                .push(Action::LonghornHold { since_ms: None });
        }
        return;
    };
    let since = rollout.longhorn_hold_since_ms.unwrap_or(now);
    if rollout.longhorn_hold_since_ms.is_none() {
        decision.actions.push(Action::LonghornHold {
            since_ms: Some(now),
        });
    }
    let mut volumes: Vec<String> = held.iter().map(|h| h.describe(view)).collect();
    volumes.sort();
    volumes.dedup();
    let limit = seconds_or(
        rollout.options.longhorn_rebuild_timeout_seconds,
        DEFAULT_LONGHORN_TIMEOUT,
    );
    if elapsed(Some(since), now, limit) {
        decision.actions.push(Action::Pause {
            reason: format!(
                "no node could start for {}s: {}; resume once Longhorn has rebuilt them",
                secs(now - since),
                volumes.join("; ")
            ),
        });
    } else {
        decision.block(
            "",
            format!(
                "waiting for Longhorn for {}s of {}s: {}",
                secs(now - since),
                limit.as_secs(),
                volumes.join("; ")
            ),
        );
    }
}

/// Outside every maintenance window (or with one that does not parse,
/// which pauses): nothing starts.
fn outside_windows(rollout: &RolloutRecord, seen: &Observed, decision: &mut Decision) -> bool {
    let windows: Result<Vec<MaintenanceWindow>, String> = rollout
        .options
        .windows
        .iter()
        .map(|w| w.parse::<MaintenanceWindow>())
        .collect();
    let windows = match windows {
        Ok(windows) => windows,
        Err(err) => {
            decision.actions.push(Action::Pause { reason: err });
            return true;
        }
    };
    let at = jiff::Timestamp::from_millisecond(seen.now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    if window::open(&windows, at) {
        return false;
    }
    let next = windows.iter().filter_map(|w| w.next_open(at)).min();
    decision.block(
        "",
        match next {
            Some(at) => format!("outside the maintenance windows; the next opens at {at}"),
            None => "outside the maintenance windows".to_string(),
        },
    );
    true
}

fn start(nodes: &[&NodeProgress], seen: &Observed, decision: &mut Decision) {
    decision.actions.push(Action::Start {
        nodes: nodes.iter().map(|n| n.node.clone()).collect(),
        binaries: nodes
            .iter()
            .map(|n| {
                seen.agents
                    .get(&n.node)
                    .map(|a| a.binary_sha256.clone())
                    .unwrap_or_default()
            })
            .collect(),
    });
}

/// With an alerts gate: whether alerts hold new nodes back now (and the
/// hold's bookkeeping, and the pause once it lasts too long).
fn alerts_hold(rollout: &RolloutRecord, seen: &Observed, decision: &mut Decision) -> bool {
    let Some(alerts) = &seen.alerts else {
        return false;
    };
    let now = seen.now_ms;
    let holding = match alerts {
        Ok(firing) if firing.is_empty() => None,
        Ok(firing) => Some(format!("alerts firing: {}", firing.join(", "))),
        Err(err) => Some(format!("cannot read the alerts ({err})")),
    };
    let Some(why) = holding else {
        if rollout.alert_hold_since_ms.is_some() {
            decision.actions.push(Action::AlertHold { since_ms: None });
        }
        return false;
    };
    let since = rollout.alert_hold_since_ms.unwrap_or(now);
    if rollout.alert_hold_since_ms.is_none() {
        decision.actions.push(Action::AlertHold {
            since_ms: Some(now),
        });
    }
    let limit = seconds_or(
        rollout.options.alerts_hold_timeout_seconds,
        DEFAULT_HOLD_TIMEOUT,
    );
    if elapsed(Some(since), now, limit) {
        decision.actions.push(Action::Pause {
            reason: format!(
                "no node started for {}s: {why}; resume once they are resolved",
                secs(now - since)
            ),
        });
    } else {
        decision.block(
            "",
            format!(
                "held for {}s of {}s: {why}",
                secs(now - since),
                limit.as_secs()
            ),
        );
    }
    true
}

/// Whether this round should read the PodDisruptionBudgets: a worker could
/// start now.
pub fn wants_budgets(rollout: &RolloutRecord) -> bool {
    if rollout.phase != Phase::Running {
        return false;
    }
    let servers_busy = rollout
        .nodes
        .iter()
        .any(|n| n.server && !n.step.is_terminal());
    let pending_worker = rollout
        .nodes
        .iter()
        .any(|n| !n.server && n.step == Step::Pending);
    if servers_busy || !pending_worker {
        return false;
    }
    let workers = rollout.nodes.iter().filter(|n| !n.server).count();
    // A retried worker still cordoned starts again in the slot it holds.
    let returning = rollout
        .nodes
        .iter()
        .any(|n| !n.server && n.step == Step::Pending && n.cordoned_by_us);
    let out = rollout
        .nodes
        .iter()
        .filter(|n| !n.server && (n.step.is_in_flight() || n.cordoned_by_us))
        .count();
    match rollout.options.max_unavailable.parse::<MaxUnavailable>() {
        Ok(max) => returning || out < max.resolve(workers),
        Err(_) => false,
    }
}

/// Whether this round should read Longhorn: a node could start.
pub fn wants_longhorn(rollout: &RolloutRecord) -> bool {
    let server_next = rollout.phase == Phase::Running
        && rollout
            .nodes
            .iter()
            .any(|n| n.server && n.step == Step::Pending)
        && !rollout
            .nodes
            .iter()
            .any(|n| n.server && n.step.is_in_flight());
    server_next || wants_budgets(rollout)
}

/// Whether this round should ask the alerts source: a node could start.
pub fn wants_alerts(rollout: &RolloutRecord) -> bool {
    rollout.phase == Phase::Running
        && !rollout.options.alerts_url.is_empty()
        && rollout.nodes.iter().any(|n| n.step == Step::Pending)
}
