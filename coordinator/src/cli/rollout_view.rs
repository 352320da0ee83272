//! How rollouts look on a terminal: the plan, the node table, change lines
//! for pipes and logs, and the closing summary. Pure functions of the
//! protocol messages, so what operators read is tested as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k3sfleet_proto::v1::{NodeRole, NodeStatus, RolloutStatus, UpgradePlan};

use super::output;

fn role(role: i32) -> &'static str {
    if role == NodeRole::Server as i32 {
        "server"
    } else {
        "agent"
    }
}

fn duration(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// The plan as an operator reads it.
pub fn plan(plan: &UpgradePlan) -> String {
    let mut out = String::new();
    let nodes: usize = plan.waves.iter().map(|w| w.nodes.len()).sum();
    let _ = writeln!(
        out,
        "Upgrade to {}: {nodes} nodes in {} waves (one at a time would take {}; saves {}), at most {} workers at once",
        plan.target_version,
        plan.waves.len(),
        plan.waves_one_at_a_time,
        plan.waves_one_at_a_time
            .saturating_sub(plan.waves.len() as u32),
        plan.max_unavailable
    );
    for wave in &plan.waves {
        let names: Vec<&str> = wave.nodes.iter().map(|n| n.name.as_str()).collect();
        let first = wave.nodes.first();
        let _ = writeln!(
            out,
            "  wave {:>2}: {} ({}: {} -> {})",
            wave.number,
            names.join(", "),
            first.map_or("", |n| role(n.role)),
            first.map_or("", |n| n.from_version.as_str()),
            first.map_or("", |n| n.to_version.as_str()),
        );
    }
    if let Some(first) = plan
        .waves
        .iter()
        .flat_map(|w| &w.nodes)
        .find(|n| n.role == NodeRole::Server as i32)
    {
        let _ = writeln!(out, "Each server: {}", first.steps.join(" -> "));
    }
    if let Some(first) = plan
        .waves
        .iter()
        .flat_map(|w| &w.nodes)
        .find(|n| n.role != NodeRole::Server as i32)
    {
        let _ = writeln!(out, "Each worker: {}", first.steps.join(" -> "));
    }
    if !plan.longhorn_policy.is_empty() {
        let _ = writeln!(
            out,
            "Longhorn's node drain policy: {}",
            plan.longhorn_policy
        );
    }
    let line = |out: &mut String, blocker: &k3sfleet_proto::v1::PlanBlocker| {
        let node = if blocker.node.is_empty() {
            String::new()
        } else {
            format!("{}: ", blocker.node)
        };
        let _ = writeln!(out, "  [{}] {node}{}", blocker.kind, blocker.message);
    };
    let (permanent, passing): (Vec<_>, Vec<_>) = plan.blockers.iter().partition(|b| b.permanent);
    if !passing.is_empty() {
        let _ = writeln!(out, "Would block right now:");
        for blocker in passing {
            line(&mut out, blocker);
        }
    }
    if !permanent.is_empty() {
        let _ = writeln!(
            out,
            "Will not pass by waiting (start refuses unless --permanent-blockers skip or wait):"
        );
        for blocker in permanent {
            line(&mut out, blocker);
        }
    }
    if !plan.refusals.is_empty() {
        let _ = writeln!(out, "Refused:");
        for refusal in &plan.refusals {
            let _ = writeln!(out, "  {} (rule {})", refusal.message, refusal.rule);
        }
    }
    out
}

/// What the node is doing, or why it stopped, for the table.
fn activity(node: &NodeStatus) -> String {
    if !node.failure.is_empty() {
        node.failure.clone()
    } else {
        node.blocker.clone()
    }
}

fn elapsed(node: &NodeStatus, now: i64) -> String {
    match (node.started_unix_ms, node.finished_unix_ms) {
        (0, _) => "-".into(),
        (start, 0) => duration(now - start),
        (start, end) => duration(end - start),
    }
}

/// The live table: one line per node.
pub fn table(status: &RolloutStatus) -> String {
    let mut out = header(status);
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                role(n.role).to_string(),
                if n.wave == 0 {
                    "-".into()
                } else {
                    n.wave.to_string()
                },
                n.step.clone(),
                elapsed(n, status.now_unix_ms),
                activity(n),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &[
            "NODE",
            "ROLE",
            "WAVE",
            "STEP",
            "ELAPSED",
            "WAITING ON / FAILURE",
        ],
        &rows,
    ));
    out
}

fn header(status: &RolloutStatus) -> String {
    let done = status.nodes.iter().filter(|n| n.step == "done").count();
    let end = if status.finished_unix_ms > 0 {
        status.finished_unix_ms
    } else {
        status.now_unix_ms
    };
    let mut line = format!(
        "Rollout {} to {}: {} - {done}/{} nodes done, {} elapsed",
        status.id,
        status.target_version,
        status.phase,
        status.nodes.len(),
        duration(end - status.created_unix_ms),
    );
    if !status.pause_reason.is_empty() {
        let _ = write!(line, "\n  {}", status.pause_reason);
    }
    line.push('\n');
    line
}

/// One line per change between two snapshots, for pipes and logs.
pub fn changes(before: Option<&RolloutStatus>, after: &RolloutStatus) -> Vec<String> {
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(after.now_unix_ms.max(0) as u64),
    );
    let mut lines = Vec::new();
    let previous: BTreeMap<&str, &NodeStatus> = before
        .map(|b| b.nodes.iter().map(|n| (n.name.as_str(), n)).collect())
        .unwrap_or_default();
    if before.map(|b| (&b.phase, &b.pause_reason)) != Some((&after.phase, &after.pause_reason)) {
        let reason = if after.pause_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", after.pause_reason)
        };
        lines.push(format!(
            "{stamp} rollout {} {}{reason}",
            after.id, after.phase
        ));
    }
    for node in &after.nodes {
        let old = previous.get(node.name.as_str());
        if old.map(|o| &o.step) != Some(&node.step) && node.step != "pending" {
            let failure = if node.failure.is_empty() {
                String::new()
            } else {
                format!(": {}", node.failure)
            };
            lines.push(format!("{stamp} {} {}{failure}", node.name, node.step));
        }
        if old.map(|o| &o.blocker) != Some(&node.blocker) && !node.blocker.is_empty() {
            lines.push(format!(
                "{stamp} {} {}: {}",
                node.name, node.step, node.blocker
            ));
        }
    }
    lines
}

/// The closing summary: total time, each node's time, waits by reason.
pub fn summary(status: &RolloutStatus) -> String {
    let mut out = String::new();
    let end = if status.finished_unix_ms > 0 {
        status.finished_unix_ms
    } else {
        status.now_unix_ms
    };
    let _ = writeln!(
        out,
        "Rollout {} to {} {} in {} ({} waves)",
        status.id,
        status.target_version,
        status.phase,
        duration(end - status.created_unix_ms),
        status.waves_started
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let mut waits: Vec<(&str, u64)> = n
                .waits
                .iter()
                .map(|w| (w.reason.as_str(), w.millis))
                .collect();
            waits.sort_by_key(|(_, ms)| std::cmp::Reverse(*ms));
            let waits: Vec<String> = waits
                .iter()
                .take(3)
                .map(|(reason, ms)| format!("{reason} {}", duration(*ms as i64)))
                .collect();
            vec![
                n.name.clone(),
                n.step.clone(),
                elapsed(n, end),
                waits.join(", "),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["NODE", "RESULT", "TIME", "LONGEST WAITS"],
        &rows,
    ));
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for wait in status.nodes.iter().flat_map(|n| &n.waits) {
        *totals.entry(wait.reason.as_str()).or_default() += wait.millis;
    }
    let mut totals: Vec<(&str, u64)> = totals.into_iter().collect();
    totals.sort_by_key(|(_, ms)| std::cmp::Reverse(*ms));
    let totals: Vec<String> = totals
        .iter()
        .map(|(r, ms)| format!("{r} {}", duration(*ms as i64)))
        .collect();
    let _ = writeln!(out, "Time by reason (all nodes): {}", totals.join(", "));
    out
}

/// Why a rollout paused and what the operator can do about it.
pub fn paused_hint(status: &RolloutStatus) -> String {
    let reason = if status.pause_reason.is_empty() {
        "paused by an operator"
    } else {
        &status.pause_reason
    };
    let mut out = format!("Paused: {reason}\n");
    let failed: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| n.step == "failed")
        .map(|n| n.name.as_str())
        .collect();
    for node in status.nodes.iter().filter(|n| n.step == "failed") {
        let _ = writeln!(out, "  {} failed: {}", node.name, node.failure);
    }
    out.push_str("Decide: k3sfleet upgrade resume");
    if let Some(node) = failed.first() {
        let _ = write!(out, " | retry {node} | skip {node}");
    }
    out.push_str(" | abort");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::{PlanBlocker, PlanRefusal, PlannedNode, WaitTotal, Wave};

    fn node(name: &str, server: bool, step: &str, wave: u32) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: if server {
                NodeRole::Server
            } else {
                NodeRole::Agent
            } as i32,
            step: step.into(),
            wave,
            ..Default::default()
        }
    }

    #[test]
    fn plan_golden() {
        let planned = |name: &str, server: bool| PlannedNode {
            name: name.into(),
            role: if server {
                NodeRole::Server
            } else {
                NodeRole::Agent
            } as i32,
            from_version: "v1.31.4+k3s1".into(),
            to_version: "v1.31.5+k3s1".into(),
            steps: vec!["pre_check".into(), "cordon".into()],
        };
        let text = plan(&UpgradePlan {
            target_version: "v1.31.5+k3s1".into(),
            waves: vec![
                Wave {
                    number: 1,
                    nodes: vec![planned("server-1", true)],
                },
                Wave {
                    number: 2,
                    nodes: vec![planned("worker-01", false), planned("worker-02", false)],
                },
            ],
            refusals: vec![PlanRefusal {
                rule: "no-downgrade".into(),
                message: "x runs newer".into(),
            }],
            blockers: vec![
                PlanBlocker {
                    node: "worker-02".into(),
                    kind: "agent".into(),
                    message: "the agent is not connected".into(),
                    permanent: false,
                },
                PlanBlocker {
                    node: "worker-01".into(),
                    kind: "pdb".into(),
                    message: "PDB db/pg never allows".into(),
                    permanent: true,
                },
            ],
            waves_one_at_a_time: 3,
            max_unavailable: 2,
            longhorn_policy: "block-if-contains-last-replica".into(),
        });
        assert_eq!(
            text,
            "Upgrade to v1.31.5+k3s1: 3 nodes in 2 waves (one at a time would take 3; saves 1), at most 2 workers at once\n\
             \x20 wave  1: server-1 (server: v1.31.4+k3s1 -> v1.31.5+k3s1)\n\
             \x20 wave  2: worker-01, worker-02 (agent: v1.31.4+k3s1 -> v1.31.5+k3s1)\n\
             Each server: pre_check -> cordon\n\
             Each worker: pre_check -> cordon\n\
             Longhorn's node drain policy: block-if-contains-last-replica\n\
             Would block right now:\n\
             \x20 [agent] worker-02: the agent is not connected\n\
             Will not pass by waiting (start refuses unless --permanent-blockers skip or wait):\n\
             \x20 [pdb] worker-01: PDB db/pg never allows\n\
             Refused:\n\
             \x20 x runs newer (rule no-downgrade)\n"
        );
    }

    #[test]
    fn change_lines_name_steps_and_blockers() {
        let mut before = RolloutStatus {
            id: 7,
            phase: "running".into(),
            nodes: vec![node("worker-01", false, "cordon", 2)],
            ..Default::default()
        };
        let mut after = before.clone();
        after.nodes[0].step = "drain".into();
        after.nodes[0].blocker = "waiting on PDB shop/web: 2/3 healthy".into();
        let lines = changes(Some(&before), &after);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with("worker-01 drain"), "{lines:?}");
        assert!(
            lines[1].ends_with("worker-01 drain: waiting on PDB shop/web: 2/3 healthy"),
            "{lines:?}"
        );
        // Nothing changed: nothing printed.
        before = after.clone();
        assert!(changes(Some(&before), &after).is_empty());
        after.phase = "paused".into();
        after.pause_reason = "worker-01 install failed".into();
        assert!(
            changes(Some(&before), &after)[0]
                .ends_with("rollout 7 paused: worker-01 install failed")
        );
    }

    #[test]
    fn summary_lists_nodes_and_waits() {
        let mut done = node("worker-01", false, "done", 2);
        done.started_unix_ms = 1_000;
        done.finished_unix_ms = 61_000;
        done.waits = vec![
            WaitTotal {
                reason: "pdb shop/web".into(),
                millis: 20_000,
            },
            WaitTotal {
                reason: "install".into(),
                millis: 5_000,
            },
        ];
        let text = summary(&RolloutStatus {
            id: 3,
            target_version: "v1.31.5+k3s1".into(),
            phase: "completed".into(),
            created_unix_ms: 0,
            finished_unix_ms: 125_000,
            waves_started: 4,
            nodes: vec![done],
            ..Default::default()
        });
        assert!(
            text.starts_with("Rollout 3 to v1.31.5+k3s1 completed in 2m05s (4 waves)"),
            "{text}"
        );
        assert!(
            text.contains("worker-01   done     1m00s   pdb shop/web 20s, install 5s"),
            "{text}"
        );
        assert!(
            text.contains("Time by reason (all nodes): pdb shop/web 20s, install 5s"),
            "{text}"
        );
    }

    #[test]
    fn paused_hint_names_the_reason_failures_and_choices() {
        let mut failed = node("worker-03", false, "failed", 2);
        failed.failure = "install failed: k3s.service did not come up; rolled back".into();
        let paused = RolloutStatus {
            phase: "paused".into(),
            pause_reason: "worker-03 failed at install".into(),
            nodes: vec![node("worker-01", false, "done", 2), failed],
            ..Default::default()
        };
        assert_eq!(
            paused_hint(&paused),
            "Paused: worker-03 failed at install\n\
             \x20 worker-03 failed: install failed: k3s.service did not come up; rolled back\n\
             Decide: k3sfleet upgrade resume | retry worker-03 | skip worker-03 | abort"
        );
        let by_operator = RolloutStatus {
            phase: "paused".into(),
            ..Default::default()
        };
        assert_eq!(
            paused_hint(&by_operator),
            "Paused: paused by an operator\nDecide: k3sfleet upgrade resume | abort"
        );
    }
}
