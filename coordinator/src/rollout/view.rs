//! A rollout as the API shows it.

use std::collections::BTreeMap;

use k3sfleet_proto::v1::{NodeRole, NodeStatus, RolloutStatus, WaitTotal};

use super::window::MaintenanceWindow;
use crate::store::RolloutRecord;

/// The status of `rollout`, with the blockers of an active one ("" is the
/// rollout's own), at `now_ms`.
pub fn to_proto(
    rollout: &RolloutRecord,
    blockers: &BTreeMap<String, String>,
    now_ms: i64,
) -> RolloutStatus {
    let active = !rollout.phase.is_finished();
    let blocker = |key: &str| {
        if active {
            blockers.get(key).cloned().unwrap_or_default()
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
    let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
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
                wave: node.batch,
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
        waves_started: rollout.batches_started,
        now_unix_ms: now_ms,
        generation: rollout.generation,
    }
}
