//! A rollout as the API shows it.

use k3sfleet_proto::v1::{NodeRole, NodeStatus, RolloutStatus, WaitTotal};

use super::engine::RolloutEngine;
use super::window::MaintenanceWindow;
use crate::clock::unix_ms;
use crate::store::RolloutRecord;

pub fn to_proto(rollout: &RolloutRecord, engine: &RolloutEngine) -> RolloutStatus {
    let active = !rollout.phase.is_finished();
    let blocker = |key: &str| {
        if active {
            engine.blocker(key)
        } else {
            String::new()
        }
    };
    let windows: Vec<MaintenanceWindow> = rollout
        .options
        .windows
        .iter()
        .filter_map(|w| w.parse().ok())
        .collect();
    let now = jiff::Timestamp::now();
    let window_opens = if active && !super::window::open(&windows, now) {
        windows
            .iter()
            .filter_map(|w| w.next_open(now))
            .min()
            .map_or(0, |at| at.as_millisecond())
    } else {
        0
    };
    RolloutStatus {
        id: rollout.id as u64,
        target_version: rollout.target.clone(),
        phase: rollout.phase.as_str().to_string(),
        pause_reason: match (rollout.pause_reason.as_str(), blocker("")) {
            ("", rollout_blocker) => rollout_blocker,
            (reason, _) => reason.to_string(),
        },
        created_unix_ms: rollout.created_at_ms,
        updated_unix_ms: rollout.updated_at_ms,
        finished_unix_ms: rollout.finished_at_ms.unwrap_or(0),
        options: Some(rollout.options.clone()),
        nodes: rollout
            .nodes
            .iter()
            .map(|node| NodeStatus {
                name: node.node.clone(),
                role: if node.server {
                    NodeRole::Server
                } else {
                    NodeRole::Agent
                } as i32,
                step: node.step.as_str().to_string(),
                attempt: node.attempt,
                wave: node.wave,
                step_started_unix_ms: node.step_started_ms.unwrap_or(0),
                started_unix_ms: node.started_ms.unwrap_or(0),
                finished_unix_ms: node.finished_ms.unwrap_or(0),
                blocker: blocker(&node.node),
                failure: node.failure.clone(),
                from_version: node.from_version.clone(),
                cordoned_by_k3sfleet: node.cordoned_by_us,
                waits: node
                    .waits
                    .iter()
                    .map(|(reason, millis)| WaitTotal {
                        reason: reason.clone(),
                        millis: *millis,
                    })
                    .collect(),
                snapshot: node.snapshot.clone(),
            })
            .collect(),
        window_opens_unix_ms: window_opens,
        waves_started: rollout.waves_started,
        now_unix_ms: unix_ms(),
    }
}
