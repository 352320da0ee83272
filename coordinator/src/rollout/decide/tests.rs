//! Every transition of the decision, one test each, on a small world built
//! by hand: what `decide` asks for from a record and an observation, and
//! what `on_result` makes of an executor's report.

use std::collections::BTreeMap;

use k3sfleet_proto::v1::UpgradeOptions;

use super::*;
use crate::drain::{Claim, CordonState};
use crate::rollout::action::{OpFailure, StepOutcome};
use crate::rollout::cluster::{ClusterError, NodeState};
use crate::rollout::link::{AgentView, Presence};
use crate::rollout::planner::Budget;
use crate::rollout::transition::apply;

const FROM: &str = "v1.31.4+k3s1";
const TO: &str = "v1.31.5+k3s1";
const NOW: i64 = 1_800_000_000_000;

fn settings() -> EngineSettings {
    EngineSettings::default()
}

fn rollout(servers: usize, workers: usize, max_unavailable: &str) -> RolloutRecord {
    let mut nodes = Vec::new();
    for i in 1..=servers {
        nodes.push(NodeProgress::new(format!("server-{i}"), true, FROM.into()));
    }
    for i in 1..=workers {
        nodes.push(NodeProgress::new(format!("worker-{i}"), false, FROM.into()));
    }
    RolloutRecord {
        id: 7,
        target: TO.into(),
        phase: Phase::Running,
        pause_reason: String::new(),
        options: UpgradeOptions {
            target_version: TO.into(),
            max_unavailable: max_unavailable.into(),
            settle_seconds: 10,
            health_timeout_seconds: 60,
            ..Default::default()
        },
        created_at_ms: NOW,
        updated_at_ms: NOW,
        finished_at_ms: None,
        created_by: "admin:test".into(),
        batches_started: 0,
        generation: 1,
        alert_hold_since_ms: None,
        longhorn_hold_since_ms: None,
        nodes,
    }
}

/// Every node of `rollout` healthy at `version`, its agent connected.
fn world(rollout: &RolloutRecord, version: &str) -> Observed {
    let mut seen = Observed::at(NOW);
    let mut nodes = BTreeMap::new();
    for node in &rollout.nodes {
        seen.agents.insert(
            node.node.clone(),
            AgentView {
                presence: Presence::Connected,
                server: node.server,
                arch: "amd64".into(),
                k3s_version: version.into(),
                binary_sha256: format!("sha-of-{version}"),
                failing_checks: Vec::new(),
                checks: Vec::new(),
                etcd: node.server.then_some(Ok(())),
            },
        );
        nodes.insert(
            node.node.clone(),
            NodeState {
                name: node.node.clone(),
                ready: true,
                kubelet_version: version.into(),
                cordon: CordonState::Schedulable,
            },
        );
    }
    seen.nodes = Ok(nodes);
    seen.budgets = Some(Ok(Vec::new()));
    seen.longhorn = Some(Ok(None));
    seen
}

fn node<'a>(rollout: &'a mut RolloutRecord, name: &str) -> &'a mut NodeProgress {
    rollout.nodes.iter_mut().find(|n| n.node == name).unwrap()
}

/// Puts `name` at `step` as if it got there at `at_ms`.
fn at(rollout: &mut RolloutRecord, name: &str, step: Step, at_ms: i64) {
    let n = node(rollout, name);
    n.step = step;
    n.attempt = n.attempt.max(1);
    n.step_started_ms = Some(at_ms);
    n.batch = n.batch.max(1);
}

fn claimed(seen: &mut Observed, name: &str, rollout: i64) {
    let state = seen.nodes.as_mut().unwrap().get_mut(name).unwrap();
    state.cordon = CordonState::Claimed(Claim {
        owner: crate::drain::Owner::Rollout(rollout as u64),
        at: "2026-12-01T00:00:00Z".into(),
    });
}

fn starts(decision: &Decision) -> Vec<Vec<String>> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { nodes, .. } => Some(nodes.clone()),
            _ => None,
        })
        .collect()
}

fn runs(decision: &Decision) -> Vec<(String, Op)> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Run(key) => Some((key.node.clone(), key.op)),
            _ => None,
        })
        .collect()
}

fn budget(name: &str, allowed: u32, pods: &[(&str, u32)]) -> Budget {
    Budget {
        name: name.into(),
        allowed,
        pods_on: pods.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        permanent: None,
    }
}

// --- starting nodes -------------------------------------------------------

#[test]
fn servers_start_first_one_at_a_time_before_any_worker() {
    let mut r = rollout(3, 2, "2");
    let seen = world(&r, FROM);
    assert_eq!(starts(&decide(&r, &seen, &settings())), [["server-1"]]);

    at(&mut r, "server-1", Step::Drain, NOW);
    assert!(starts(&decide(&r, &world(&r, FROM), &settings())).is_empty());

    at(&mut r, "server-1", Step::Done, NOW);
    at(&mut r, "server-2", Step::Done, NOW);
    assert_eq!(
        starts(&decide(&r, &world(&r, FROM), &settings())),
        [["server-3"]]
    );

    at(&mut r, "server-3", Step::Done, NOW);
    assert_eq!(
        starts(&decide(&r, &world(&r, FROM), &settings())),
        [["worker-1", "worker-2"]]
    );
}

#[test]
fn a_free_slot_starts_the_next_worker_while_others_are_still_under_way() {
    let mut r = rollout(0, 4, "2");
    at(&mut r, "worker-1", Step::Install, NOW);
    at(&mut r, "worker-2", Step::Done, NOW);
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert_eq!(
        starts(&decision),
        [["worker-3"]],
        "no barrier between batches"
    );

    at(&mut r, "worker-3", Step::Drain, NOW);
    assert!(
        starts(&decide(&r, &world(&r, FROM), &settings())).is_empty(),
        "both slots taken"
    );
}

#[test]
fn a_worker_whose_pods_would_overdraw_a_budget_beside_a_draining_one_waits() {
    let mut r = rollout(0, 3, "3");
    at(&mut r, "worker-1", Step::Drain, NOW);
    let mut seen = world(&r, FROM);
    seen.budgets = Some(Ok(vec![budget(
        "shop/web",
        1,
        &[("worker-1", 1), ("worker-2", 1)],
    )]));
    let decision = decide(&r, &seen, &settings());
    assert_eq!(starts(&decision), [["worker-3"]]);

    // Once worker-1 has no web pod left, worker-2 may go.
    at(&mut r, "worker-3", Step::Install, NOW);
    seen.budgets = Some(Ok(vec![budget("shop/web", 1, &[("worker-2", 1)])]));
    assert_eq!(starts(&decide(&r, &seen, &settings())), [["worker-2"]]);
}

#[test]
fn without_budgets_read_no_worker_starts_and_the_reason_is_shown() {
    let r = rollout(0, 2, "1");
    let mut seen = world(&r, FROM);
    seen.budgets = Some(Err(ClusterError::retryable("connection refused")));
    let decision = decide(&r, &seen, &settings());
    assert!(starts(&decision).is_empty());
    assert!(decision.blockers[""].contains("connection refused"));
    seen.budgets = None;
    assert!(starts(&decide(&r, &seen, &settings())).is_empty());
    assert!(wants_budgets(&r));
}

#[test]
fn unhealthy_candidates_wait_but_one_starts_when_nothing_else_can() {
    let r = rollout(0, 2, "2");
    let mut seen = world(&r, FROM);
    seen.agents.get_mut("worker-1").unwrap().presence = Presence::Unreachable;
    let decision = decide(&r, &seen, &settings());
    assert_eq!(starts(&decision), [["worker-2"]]);
    assert!(decision.blockers["worker-1"].contains("unreachable"));

    seen.agents.get_mut("worker-2").unwrap().presence = Presence::Disconnected;
    assert_eq!(
        starts(&decide(&r, &seen, &settings())),
        [["worker-1"]],
        "so its pre-check names the problem and, if it lasts, pauses"
    );
}

#[test]
fn a_node_an_operator_is_draining_is_not_started() {
    let r = rollout(0, 2, "2");
    let mut seen = world(&r, FROM);
    seen.draining.insert("worker-1".into());
    let decision = decide(&r, &seen, &settings());
    assert_eq!(starts(&decision), [["worker-2"]]);
    assert!(decision.blockers["worker-1"].contains("draining"));
}

#[test]
fn outside_the_windows_nothing_starts_and_a_window_that_does_not_parse_pauses() {
    let mut r = rollout(0, 1, "1");
    // 1_800_000_000_000 ms is a Friday, 08:00 UTC.
    r.options.windows = vec!["Sat-Sun 00:00-06:00 UTC".into()];
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert!(starts(&decision).is_empty());
    assert!(decision.blockers[""].contains("outside the maintenance windows"));

    r.options.windows = vec!["Someday".into()];
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert!(matches!(
        decision.actions.as_slice(),
        [Action::Pause { .. }]
    ));
}

#[test]
fn an_invalid_max_unavailable_pauses_rather_than_guessing() {
    let r = rollout(0, 1, "lots");
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert!(
        matches!(decision.actions.as_slice(), [Action::Pause { reason }] if reason.contains("max-unavailable")),
        "{:?}",
        decision.actions
    );
}

#[test]
fn firing_alerts_hold_new_nodes_then_pause_and_release_when_resolved() {
    let mut r = rollout(0, 2, "1");
    r.options.alerts_url = "http://127.0.0.1:9090".into();
    r.options.alerts_hold_timeout_seconds = 60;
    let mut seen = world(&r, FROM);
    seen.alerts = Some(Ok(vec!["KubeNodeNotReady".into()]));
    let decision = decide(&r, &seen, &settings());
    assert!(starts(&decision).is_empty());
    assert!(decision.actions.contains(&Action::AlertHold {
        since_ms: Some(NOW)
    }));
    assert!(decision.blockers[""].contains("KubeNodeNotReady"));

    r.alert_hold_since_ms = Some(NOW - 61_000);
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Pause { reason } if reason.contains("KubeNodeNotReady"))),
        "{:?}",
        decision.actions
    );

    seen.alerts = Some(Ok(Vec::new()));
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision
            .actions
            .contains(&Action::AlertHold { since_ms: None })
    );
    assert_eq!(starts(&decision), [["worker-1"]]);
}

#[test]
fn alerts_never_fail_a_settling_node() {
    let mut r = rollout(0, 1, "1");
    r.options.alerts_url = "http://127.0.0.1:9090".into();
    at(&mut r, "worker-1", Step::Settle, NOW - 20_000);
    node(&mut r, "worker-1").healthy_since_ms = Some(NOW - 20_000);
    let mut seen = world(&r, TO);
    seen.alerts = Some(Ok(vec!["SomethingElse".into()]));
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision.actions.iter().any(|a| matches!(
            a,
            Action::Pass {
                from: Step::Settle,
                ..
            }
        )),
        "{:?}",
        decision.actions
    );
    assert!(
        !decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Fail { .. }))
    );
}

// --- steps ------------------------------------------------------------------

#[test]
fn pre_checks_pass_on_health_wait_on_trouble_and_fail_when_it_lasts() {
    let mut r = rollout(3, 0, "1");
    at(&mut r, "server-2", Step::PreCheck, NOW - 1_000);
    let mut seen = world(&r, FROM);
    let decision = decide(&r, &seen, &settings());
    assert!(decision.actions.iter().any(
        |a| matches!(a, Action::Pass { node, from: Step::PreCheck, .. } if node == "server-2")
    ));

    // Another server's etcd member is unhealthy: quorum is at risk.
    seen.agents.get_mut("server-3").unwrap().etcd = Some(Err("unhealthy".into()));
    let decision = decide(&r, &seen, &settings());
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert!(decision.blockers["server-2"].contains("etcd member on server-3"));

    // And a server that is away counts too.
    seen.agents.get_mut("server-3").unwrap().etcd = Some(Ok(()));
    seen.agents.get_mut("server-1").unwrap().presence = Presence::Unreachable;
    let decision = decide(&r, &seen, &settings());
    assert!(decision.blockers["server-2"].contains("agent on server-1 is unreachable"));

    node(&mut r, "server-2").step_started_ms = Some(NOW - 121_000);
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision.actions.iter().any(|a| matches!(a, Action::Fail { roll_back: false, reason, .. } if reason.contains("still failing"))),
        "{:?}",
        decision.actions
    );
}

#[test]
fn a_server_does_not_pass_its_pre_check_while_another_is_still_cordoned_by_the_rollout() {
    let mut r = rollout(3, 0, "1");
    at(&mut r, "server-1", Step::Skipped, NOW);
    at(&mut r, "server-2", Step::PreCheck, NOW);
    let mut seen = world(&r, FROM);
    // server-1's cordon took effect but its answer was lost: only the claim tells.
    claimed(&mut seen, "server-1", 7);
    let decision = decide(&r, &seen, &settings());
    assert!(
        !decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Pass { node, .. } if node == "server-2")),
        "{:?}",
        decision.actions
    );
    assert!(decision.blockers["server-2"].contains("server-1 is still cordoned"));
    assert_eq!(runs(&decision), [("server-1".to_string(), Op::Release)]);
}

#[test]
fn nothing_starts_or_ends_while_the_nodes_cannot_be_read() {
    let r = rollout(0, 2, "2");
    let mut seen = world(&r, FROM);
    seen.nodes = Err(ClusterError::retryable("503"));
    let decision = decide(&r, &seen, &settings());
    assert!(starts(&decision).is_empty());
    assert!(decision.blockers[""].contains("cannot read the nodes"));

    let mut r = rollout(0, 1, "1");
    r.phase = Phase::Aborting;
    at(&mut r, "worker-1", Step::Aborted, NOW);
    assert!(
        !decide(&r, &seen, &settings())
            .actions
            .contains(&Action::FinishAbort),
        "its cordon may still be k3sfleet's"
    );
}

#[test]
fn an_abort_lifts_the_cordon_a_retried_node_still_waits_under() {
    let mut r = rollout(0, 2, "2");
    r.phase = Phase::Aborting;
    node(&mut r, "worker-1").attempt = 1;
    let mut seen = world(&r, FROM);
    claimed(&mut seen, "worker-1", 7);
    let decision = decide(&r, &seen, &settings());
    assert_eq!(runs(&decision), [("worker-1".to_string(), Op::Release)]);
    assert!(!decision.actions.contains(&Action::FinishAbort));
}

#[test]
fn a_retried_worker_still_cordoned_holds_its_slot_and_starts_again_in_it() {
    let mut r = rollout(0, 3, "1");
    node(&mut r, "worker-2").cordoned_by_us = true;
    node(&mut r, "worker-2").attempt = 1;
    assert!(wants_budgets(&r));
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert_eq!(
        starts(&decision),
        [["worker-2"]],
        "it goes again, and nobody else takes a slot beside it"
    );
    let mut r = rollout(0, 3, "2");
    node(&mut r, "worker-3").cordoned_by_us = true;
    assert_eq!(
        starts(&decide(&r, &world(&r, FROM), &settings())),
        [["worker-3", "worker-1"]]
    );
}

#[test]
fn operation_steps_are_sent_once_per_try_and_retried_after_their_backoff() {
    let mut r = rollout(1, 0, "1");
    at(&mut r, "server-1", Step::Snapshot, NOW);
    let mut seen = world(&r, FROM);
    assert_eq!(
        runs(&decide(&r, &seen, &settings())),
        [("server-1".to_string(), Op::Snapshot)]
    );

    seen.running
        .insert("server-1".into(), key(&r, &r.nodes[0], Op::Snapshot));
    assert!(
        runs(&decide(&r, &seen, &settings())).is_empty(),
        "under way"
    );

    seen.running.clear();
    let n = node(&mut r, "server-1");
    n.retries = 2;
    n.retry_at_ms = Some(NOW + 5_000);
    let decision = decide(&r, &seen, &settings());
    assert!(runs(&decision).is_empty());
    assert!(decision.blockers["server-1"].contains("try 3 in 5s"));

    node(&mut r, "server-1").retry_at_ms = Some(NOW - 1);
    let decision = decide(&r, &seen, &settings());
    match decision.actions.as_slice() {
        [Action::Run(key)] => assert_eq!(key.command_id(), "rollout-7-server-1-snapshot-1.2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sent_install_is_sent_again_after_a_restart_even_while_aborting() {
    let mut r = rollout(0, 1, "1");
    r.phase = Phase::Aborting;
    at(&mut r, "worker-1", Step::Install, NOW);
    node(&mut r, "worker-1").dispatched = true;
    // Nothing runs in this (restarted) process: the same try goes again.
    let decision = decide(&r, &world(&r, FROM), &settings());
    match decision.actions.as_slice() {
        [Action::Run(key)] => assert_eq!(key.command_id(), "rollout-7-worker-1-install-1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_is_cordoned_before_any_of_it_drains() {
    let mut r = rollout(0, 2, "2");
    at(&mut r, "worker-1", Step::Drain, NOW);
    at(&mut r, "worker-2", Step::Cordon, NOW);
    let seen = world(&r, FROM);
    let decision = decide(&r, &seen, &settings());
    assert_eq!(runs(&decision), [("worker-2".to_string(), Op::Cordon)]);
    assert!(decision.blockers["worker-1"].contains("batch to be cordoned"));

    at(&mut r, "worker-2", Step::Drain, NOW);
    assert_eq!(
        runs(&decide(&r, &seen, &settings())),
        [
            ("worker-1".to_string(), Op::Drain),
            ("worker-2".to_string(), Op::Drain)
        ]
    );
}

#[test]
fn wait_ready_passes_on_the_new_version_and_rolls_back_when_it_never_comes() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::WaitReady, NOW - 1_000);
    let seen = world(&r, FROM);
    let decision = decide(&r, &seen, &settings());
    assert!(decision.actions.is_empty());
    assert!(decision.blockers["worker-1"].contains(&format!("kubelet {TO}")));

    let decision = decide(&r, &world(&r, TO), &settings());
    assert!(matches!(
        decision.actions.as_slice(),
        [Action::Pass {
            from: Step::WaitReady,
            ..
        }]
    ));

    node(&mut r, "worker-1").step_started_ms = Some(NOW - 61_000);
    let decision = decide(&r, &seen, &settings());
    assert!(matches!(
        decision.actions.as_slice(),
        [Action::Fail {
            from: Step::WaitReady,
            roll_back: true,
            ..
        }]
    ));
}

#[test]
fn settling_holds_without_a_gap_restarts_when_unseen_and_fails_when_unhealthy() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::Settle, NOW - 30_000);
    let mut seen = world(&r, TO);
    let decision = decide(&r, &seen, &settings());
    assert_eq!(
        decision.actions,
        [Action::Settling {
            node: "worker-1".into(),
            healthy_since_ms: Some(NOW),
            unseen_since_ms: None
        }],
        "the hold starts at the first healthy look, whenever the step began"
    );

    node(&mut r, "worker-1").healthy_since_ms = Some(NOW - 10_000);
    assert!(matches!(
        decide(&r, &seen, &settings()).actions.as_slice(),
        [Action::Pass {
            from: Step::Settle,
            ..
        }]
    ));

    // The agent drops away: the hold starts over, nothing fails.
    seen.agents.get_mut("worker-1").unwrap().presence = Presence::Disconnected;
    let decision = decide(&r, &seen, &settings());
    assert_eq!(
        decision.actions,
        [Action::Settling {
            node: "worker-1".into(),
            healthy_since_ms: None,
            unseen_since_ms: Some(NOW)
        }]
    );
    let n = node(&mut r, "worker-1");
    n.healthy_since_ms = None;
    n.unseen_since_ms = Some(NOW - 61_000);
    assert!(matches!(
        decide(&r, &seen, &settings()).actions.as_slice(),
        [Action::Fail { roll_back: true, reason, .. }] if reason.contains("could not watch")
    ));

    // Seen unhealthy: fails and rolls back at once.
    seen.agents.get_mut("worker-1").unwrap().presence = Presence::Connected;
    seen.agents.get_mut("worker-1").unwrap().failing_checks =
        vec!["disk.space./ is failing: full".into()];
    assert!(matches!(
        decide(&r, &seen, &settings()).actions.as_slice(),
        [Action::Fail {
            from: Step::Settle,
            roll_back: true,
            ..
        }]
    ));
}

#[test]
fn a_failed_node_rolls_back_and_then_stays_put() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::RollBack, NOW);
    r.phase = Phase::Paused;
    assert_eq!(
        runs(&decide(&r, &world(&r, TO), &settings())),
        [("worker-1".to_string(), Op::RollBack)],
        "a rollback runs even while paused"
    );
    at(&mut r, "worker-1", Step::Failed, NOW);
    let mut seen = world(&r, FROM);
    claimed(&mut seen, "worker-1", 7);
    assert!(
        decide(&r, &seen, &settings()).actions.is_empty(),
        "a failed node keeps its cordon for the operator to look at"
    );
}

// --- pause, abort, skip, finish ---------------------------------------------

#[test]
fn pausing_holds_disruptive_steps_and_lets_upgraded_nodes_finish() {
    let mut r = rollout(0, 3, "3");
    r.phase = Phase::Paused;
    at(&mut r, "worker-1", Step::Cordon, NOW);
    at(&mut r, "worker-2", Step::Uncordon, NOW);
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert_eq!(runs(&decision), [("worker-2".to_string(), Op::Uncordon)]);
    assert_eq!(decision.blockers["worker-1"], "the rollout is paused");
    assert!(starts(&decision).is_empty());
}

#[test]
fn aborting_stops_nodes_before_their_install_and_lifts_k3sfleets_cordons() {
    let mut r = rollout(0, 4, "4");
    r.phase = Phase::Aborting;
    at(&mut r, "worker-1", Step::Drain, NOW);
    at(&mut r, "worker-2", Step::Install, NOW);
    node(&mut r, "worker-2").dispatched = true;
    at(&mut r, "worker-3", Step::Cordon, NOW);
    let mut seen = world(&r, FROM);
    seen.running
        .insert("worker-1".into(), key(&r, &r.nodes[0], Op::Drain));
    seen.running
        .insert("worker-2".into(), key(&r, &r.nodes[1], Op::Install));
    seen.running
        .insert("worker-3".into(), key(&r, &r.nodes[2], Op::Cordon));
    let decision = decide(&r, &seen, &settings());
    assert_eq!(
        decision.actions,
        [Action::Stop {
            node: "worker-1".into()
        }],
        "a drain stops; a sent install finishes; a cordon under way is waited for"
    );

    at(&mut r, "worker-1", Step::Aborted, NOW);
    at(&mut r, "worker-2", Step::Done, NOW);
    at(&mut r, "worker-3", Step::Aborted, NOW);
    let mut seen = world(&r, FROM);
    claimed(&mut seen, "worker-1", 7);
    node(&mut r, "worker-3").cordoned_by_us = true;
    let decision = decide(&r, &seen, &settings());
    assert_eq!(runs(&decision), [("worker-1".to_string(), Op::Release)]);
    assert!(
        decision.actions.contains(&Action::Released {
            node: "worker-3".into(),
            note: Some("someone else made it schedulable".into())
        }),
        "{:?}",
        decision.actions
    );
    assert!(!decision.actions.contains(&Action::FinishAbort));

    node(&mut r, "worker-3").cordoned_by_us = false;
    let decision = decide(&r, &world(&r, FROM), &settings());
    assert_eq!(decision.actions, [Action::FinishAbort]);
}

#[test]
fn a_skipped_node_is_only_ever_touched_to_lift_k3sfleets_cordon() {
    let mut r = rollout(0, 2, "2");
    at(&mut r, "worker-1", Step::Skipped, NOW);
    let mut seen = world(&r, FROM);
    claimed(&mut seen, "worker-1", 7);
    let decision = decide(&r, &seen, &settings());
    assert_eq!(runs(&decision), [("worker-1".to_string(), Op::Release)]);
    assert_eq!(starts(&decision), [["worker-2"]]);

    // Another rollout's claim is not this one's to lift.
    let mut seen = world(&r, FROM);
    claimed(&mut seen, "worker-1", 6);
    assert!(runs(&decide(&r, &seen, &settings())).is_empty());
}

#[test]
fn the_rollout_completes_once_every_node_is_done_and_no_cordon_is_held() {
    let mut r = rollout(1, 1, "1");
    at(&mut r, "server-1", Step::Done, NOW);
    at(&mut r, "worker-1", Step::Skipped, NOW);
    let mut seen = world(&r, TO);
    claimed(&mut seen, "worker-1", 7);
    let decision = decide(&r, &seen, &settings());
    assert!(!decision.actions.contains(&Action::Complete));
    assert_eq!(
        decide(&r, &world(&r, TO), &settings()).actions,
        [Action::Complete]
    );
}

#[test]
fn a_finished_rollout_decides_nothing() {
    let mut r = rollout(0, 1, "1");
    r.phase = Phase::Completed;
    assert_eq!(
        decide(&r, &world(&r, FROM), &settings()),
        Decision::default()
    );
}

// --- executors' reports -------------------------------------------------------

fn result(
    r: &RolloutRecord,
    name: &str,
    op: Op,
    outcome: Result<StepOutcome, OpFailure>,
) -> OpResult {
    let n = r.nodes.iter().find(|n| n.node == name).unwrap();
    OpResult {
        key: key(r, n, op),
        outcome,
    }
}

#[test]
fn a_success_moves_the_node_on_and_a_stale_answer_changes_nothing() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::Cordon, NOW);
    let ok = StepOutcome {
        cordon_ours: Some(true),
        ..Default::default()
    };
    let report = result(&r, "worker-1", Op::Cordon, Ok(ok.clone()));
    assert_eq!(
        on_result(&r, &report, &settings(), NOW),
        [Action::Pass {
            node: "worker-1".into(),
            from: Step::Cordon,
            outcome: ok
        }]
    );
    // The node moved on (or retried) since: the answer is stale.
    at(&mut r, "worker-1", Step::Drain, NOW);
    assert!(on_result(&r, &report, &settings(), NOW).is_empty());
    at(&mut r, "worker-1", Step::Cordon, NOW);
    node(&mut r, "worker-1").retries = 1;
    assert!(on_result(&r, &report, &settings(), NOW).is_empty());
}

#[test]
fn passing_failures_back_off_doubling_and_then_fail_the_node() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::Install, NOW);
    let failing = || Err(OpFailure::retryable("mirror unreachable"));
    let actions = on_result(
        &r,
        &result(&r, "worker-1", Op::Install, failing()),
        &settings(),
        NOW,
    );
    assert_eq!(
        actions,
        [Action::Backoff {
            node: "worker-1".into(),
            from: Step::Install,
            retries: 1,
            at_ms: NOW + 2_000,
            reason: "mirror unreachable".into()
        }]
    );
    node(&mut r, "worker-1").retries = 3;
    let actions = on_result(
        &r,
        &result(&r, "worker-1", Op::Install, failing()),
        &settings(),
        NOW,
    );
    assert!(
        matches!(actions.as_slice(), [Action::Backoff { retries: 4, at_ms, .. }] if *at_ms == NOW + 16_000)
    );

    node(&mut r, "worker-1").retries = settings().step_retries;
    let actions = on_result(
        &r,
        &result(&r, "worker-1", Op::Install, failing()),
        &settings(),
        NOW,
    );
    assert!(matches!(
        actions.as_slice(),
        [Action::Fail {
            roll_back: false,
            ..
        }]
    ));
}

#[test]
fn a_permanent_failure_fails_at_once() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::Drain, NOW);
    let actions = on_result(
        &r,
        &result(
            &r,
            "worker-1",
            Op::Drain,
            Err(OpFailure::permanent("403 forbidden")),
        ),
        &settings(),
        NOW,
    );
    assert_eq!(
        actions,
        [Action::Fail {
            node: "worker-1".into(),
            from: Step::Drain,
            reason: "403 forbidden".into(),
            roll_back: false
        }]
    );
}

#[test]
fn a_rollback_ends_failed_whatever_it_did_and_a_release_is_retried_forever() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::RollBack, NOW);
    let done = on_result(
        &r,
        &result(
            &r,
            "worker-1",
            Op::RollBack,
            Ok(StepOutcome {
                note: Some("back on v1".into()),
                ..Default::default()
            }),
        ),
        &settings(),
        NOW,
    );
    assert_eq!(
        done,
        [Action::RolledBack {
            node: "worker-1".into(),
            note: "rolled back: back on v1".into()
        }]
    );
    let failed = on_result(
        &r,
        &result(
            &r,
            "worker-1",
            Op::RollBack,
            Err(OpFailure::permanent("no previous binary")),
        ),
        &settings(),
        NOW,
    );
    assert!(
        matches!(failed.as_slice(), [Action::RolledBack { note, .. }] if note.starts_with("rollback failed"))
    );

    at(&mut r, "worker-1", Step::Skipped, NOW);
    node(&mut r, "worker-1").retries = 40;
    let retry = on_result(
        &r,
        &result(
            &r,
            "worker-1",
            Op::Release,
            Err(OpFailure::permanent("403")),
        ),
        &settings(),
        NOW,
    );
    assert!(matches!(
        retry.as_slice(),
        [Action::Backoff { retries: 41, .. }]
    ));
}

// --- what each action changes -------------------------------------------------

#[test]
fn transitions_record_batches_attempts_cordons_failures_and_the_end() {
    let mut r = rollout(0, 2, "2");
    let touched = apply(
        &mut r,
        &Action::Start {
            nodes: vec!["worker-1".into(), "worker-2".into()],
            binaries: vec!["sha-1".into(), "sha-2".into()],
        },
        NOW,
    );
    assert_eq!(touched, ["worker-1", "worker-2"]);
    assert_eq!(r.batches_started, 1);
    let w1 = &r.nodes[0];
    assert_eq!((w1.step, w1.attempt, w1.batch), (Step::PreCheck, 1, 1));
    assert_eq!(w1.from_sha256, "sha-1");
    assert_eq!(w1.started_ms, Some(NOW));

    at(&mut r, "worker-1", Step::Cordon, NOW);
    apply(
        &mut r,
        &Action::Pass {
            node: "worker-1".into(),
            from: Step::Cordon,
            outcome: StepOutcome {
                cordon_ours: Some(true),
                ..Default::default()
            },
        },
        NOW + 5,
    );
    let w1 = &r.nodes[0];
    assert_eq!(
        (w1.step, w1.cordoned_by_us, w1.was_unschedulable),
        (Step::Drain, true, Some(false))
    );
    assert_eq!(w1.step_started_ms, Some(NOW + 5));

    // A pass for a step the node has left is stale.
    assert!(
        apply(
            &mut r,
            &Action::Pass {
                node: "worker-1".into(),
                from: Step::Cordon,
                outcome: StepOutcome::default()
            },
            NOW
        )
        .is_empty()
    );

    apply(
        &mut r,
        &Action::Fail {
            node: "worker-1".into(),
            from: Step::Drain,
            reason: "timed out".into(),
            roll_back: false,
        },
        NOW,
    );
    assert_eq!(r.nodes[0].step, Step::Failed);
    assert_eq!(r.phase, Phase::Paused);
    assert_eq!(r.pause_reason, "worker-1 drain failed: timed out");

    node(&mut r, "worker-2").step = Step::Pending;
    apply(&mut r, &Action::FinishAbort, NOW);
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(r.nodes[1].step, Step::Aborted, "the pending node");
    assert_eq!(
        r.nodes[0].step,
        Step::Failed,
        "the failed node stays failed"
    );
}

#[test]
fn a_rollback_pauses_at_once_and_its_note_ends_up_in_the_failure() {
    let mut r = rollout(0, 1, "1");
    at(&mut r, "worker-1", Step::Settle, NOW);
    apply(
        &mut r,
        &Action::Fail {
            node: "worker-1".into(),
            from: Step::Settle,
            reason: "not Ready".into(),
            roll_back: true,
        },
        NOW,
    );
    assert_eq!(r.nodes[0].step, Step::RollBack);
    assert_eq!(r.phase, Phase::Paused);
    assert!(r.pause_reason.ends_with("rolling it back"));
    apply(
        &mut r,
        &Action::RolledBack {
            node: "worker-1".into(),
            note: "rolled back: back on v1.31.4+k3s1".into(),
        },
        NOW,
    );
    assert_eq!(r.nodes[0].step, Step::Failed);
    assert_eq!(
        r.nodes[0].failure,
        "settle failed: not Ready; rolled back: back on v1.31.4+k3s1"
    );
    assert!(r.pause_reason.contains("rolled back"));
}

/// A Longhorn volume with one replica on each of `replicas`' nodes, healthy
/// where `true`.
fn volume(name: &str, replicas: &[(&str, bool)]) -> crate::longhorn::Volume {
    let whole = replicas.iter().all(|(_, healthy)| *healthy);
    crate::longhorn::Volume {
        name: name.into(),
        wanted_replicas: replicas.len() as u32,
        robustness: if whole { "healthy" } else { "degraded" }.into(),
        attached_to: None,
        replicas: replicas
            .iter()
            .enumerate()
            .map(|(i, (node, healthy))| crate::longhorn::Replica {
                name: format!("{name}-r{i}"),
                node: node.to_string(),
                healthy: *healthy,
                stopped: false,
            })
            .collect(),
    }
}

fn longhorn(seen: &mut Observed, volumes: Vec<crate::longhorn::Volume>) {
    let nodes = seen
        .agents
        .keys()
        .map(|name| (name.clone(), false))
        .collect();
    seen.longhorn = Some(Ok(Some(crate::longhorn::LonghornView {
        policy: crate::longhorn::DrainPolicy::DEFAULT,
        nodes,
        volumes,
    })));
}

#[test]
fn a_rebuilding_volume_holds_the_nodes_with_its_healthy_replicas_but_not_the_one_missing_its_own() {
    let r = rollout(0, 3, "3");
    let mut seen = world(&r, FROM);
    longhorn(
        &mut seen,
        vec![volume(
            "pvc-a",
            &[("worker-1", true), ("worker-2", true), ("worker-3", false)],
        )],
    );
    let decision = decide(&r, &seen, &settings());
    assert_eq!(starts(&decision), [["worker-3"]]);
    assert!(
        decision.blockers["worker-1"]
            .contains("pvc-a (degraded, 2 of 3 replicas healthy) is rebuilding"),
        "{:?}",
        decision.blockers
    );
}

#[test]
fn two_nodes_holding_a_whole_volumes_only_replicas_never_start_together() {
    let r = rollout(0, 3, "3");
    let mut seen = world(&r, FROM);
    longhorn(
        &mut seen,
        vec![volume("pvc-b", &[("worker-1", true), ("worker-2", true)])],
    );
    let started = starts(&decide(&r, &seen, &settings())).concat();
    assert!(started.contains(&"worker-3".to_string()), "{started:?}");
    assert_eq!(
        started.iter().filter(|n| n.as_str() != "worker-3").count(),
        1,
        "only one of worker-1 and worker-2 may go: {started:?}"
    );
}

#[test]
fn longhorn_holding_every_node_pauses_after_its_timeout_naming_the_volumes() {
    let mut r = rollout(0, 2, "2");
    r.options.longhorn_rebuild_timeout_seconds = 300;
    let mut seen = world(&r, FROM);
    longhorn(
        &mut seen,
        vec![volume(
            "pvc-c",
            &[("worker-1", true), ("worker-2", true), ("worker-9", false)],
        )],
    );
    let decision = decide(&r, &seen, &settings());
    assert!(starts(&decision).is_empty());
    assert!(decision.actions.contains(&Action::LonghornHold {
        since_ms: Some(NOW)
    }));
    assert!(decision.blockers[""].contains("waiting for Longhorn for 0s of 300s"));

    r.longhorn_hold_since_ms = Some(NOW - 301_000);
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision.actions.iter().any(|a| matches!(
            a,
            Action::Pause { reason } if reason.contains("pvc-c (degraded, 2 of 3 replicas healthy)")
        )),
        "{:?}",
        decision.actions
    );

    // Rebuilt: the hold ends and nodes start.
    longhorn(
        &mut seen,
        vec![volume(
            "pvc-c",
            &[("worker-1", true), ("worker-2", true), ("worker-9", true)],
        )],
    );
    let decision = decide(&r, &seen, &settings());
    assert!(
        decision
            .actions
            .contains(&Action::LonghornHold { since_ms: None })
    );
    assert!(!starts(&decision).is_empty());
}

#[test]
fn longhorn_unreadable_for_want_of_rights_pauses_but_a_busy_api_only_waits() {
    let r = rollout(0, 1, "1");
    let mut seen = world(&r, FROM);
    seen.longhorn = Some(Err(ClusterError::permanent(
        "the coordinator may not list Longhorn's volumes",
    )));
    let decision = decide(&r, &seen, &settings());
    assert!(
        matches!(decision.actions.as_slice(), [Action::Pause { reason }] if reason.contains("may not list Longhorn's volumes")),
        "{:?}",
        decision.actions
    );

    seen.longhorn = Some(Err(ClusterError::retryable("HTTP 503")));
    let decision = decide(&r, &seen, &settings());
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert!(decision.blockers[""].contains("HTTP 503"));
}
