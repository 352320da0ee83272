//! A whole drain as an operator asks for it: plan first and refuse what
//! cannot work before anything changes, cordon under the caller's claim,
//! drain, and when the drain does not finish, apply the operator's policy,
//! never uncordoning a node someone else cordoned.

use k3sfleet_proto::v1::{
    Cordoned as CordonedEvent, DrainEvent, DrainOutcome, DrainResult, drain_event,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claim::Owner;
use super::error::one_line;
use super::node::{Cordoned, Uncordoned};
use super::{DrainEngine, DrainError, DrainOptions};

/// What to do with the node when a drain does not finish (timed out, failed,
/// or cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeoutPolicy {
    /// Leave it cordoned: the operator looks before pods come back.
    #[default]
    LeaveCordoned,
    /// Make it schedulable again, if this drain cordoned it.
    Uncordon,
}

/// Who is draining, and how to tell whether another k3sfleet owner of a
/// cordon is still at work (a drain running, the active rollout).
pub struct Claimant<'a> {
    pub owner: Owner,
    pub is_live: &'a (dyn Fn(&Owner) -> bool + Sync),
}

/// Plans, cordons `node` under the claimant's claim, drains it, applies `on_timeout` if
/// the drain did not finish, and returns the result with `left_cordoned`
/// filled in. A plan with pods that cannot be evicted ends FAILED before the
/// node is cordoned. A cordon held by another k3sfleet owner is taken over
/// when the claimant says that owner is gone (a drain that ended, a finished
/// rollout), and refused otherwise. `Err` only when nothing was changed.
pub async fn cordon_and_drain(
    engine: &DrainEngine,
    node: &str,
    claimant: &Claimant<'_>,
    options: &DrainOptions,
    on_timeout: TimeoutPolicy,
    events: mpsc::Sender<DrainEvent>,
    cancel: CancellationToken,
) -> Result<DrainResult, DrainError> {
    let owner = &claimant.owner;
    let plan = engine.plan(node, options).await?;
    if let Some(refusal) = super::plan::refusal_of(node, &plan) {
        let _ = events
            .send(DrainEvent {
                event: Some(drain_event::Event::Plan(plan)),
            })
            .await;
        return Ok(DrainResult {
            outcome: DrainOutcome::Failed as i32,
            message: format!("{refusal}; nothing was changed"),
            ..Default::default()
        });
    }
    let ours = match engine.cordon(node, owner).await? {
        Cordoned::Now | Cordoned::Already => true,
        Cordoned::Foreign => false,
        Cordoned::ClaimedBy(claim) if (claimant.is_live)(&claim.owner) => {
            return Err(DrainError::Claimed {
                node: node.to_string(),
                claim,
            });
        }
        Cordoned::ClaimedBy(stale) => match engine.adopt(node, &stale, owner).await? {
            Cordoned::Now | Cordoned::Already => true,
            Cordoned::Foreign => false,
            Cordoned::ClaimedBy(claim) => {
                return Err(DrainError::Claimed {
                    node: node.to_string(),
                    claim,
                });
            }
        },
    };
    let _ = events
        .send(DrainEvent {
            event: Some(drain_event::Event::Cordoned(CordonedEvent {
                node: node.to_string(),
                was_unschedulable: !ours,
            })),
        })
        .await;
    let mut result = match engine.drain(node, options, events, cancel).await {
        Ok(result) => result,
        Err(err) => DrainResult {
            outcome: DrainOutcome::Failed as i32,
            message: one_line(&err),
            ..Default::default()
        },
    };
    result.left_cordoned = true;
    let finished = result.outcome == DrainOutcome::Drained as i32;
    if !finished && on_timeout == TimeoutPolicy::Uncordon {
        if !ours {
            result
                .message
                .push_str("; left cordoned: it was cordoned before this drain");
        } else {
            match engine.uncordon(node, owner).await {
                Ok(Uncordoned::Now | Uncordoned::Already) => {
                    result.left_cordoned = false;
                    result.message.push_str("; uncordoned");
                }
                Ok(Uncordoned::NotOurs(_)) => {
                    result
                        .message
                        .push_str("; left cordoned: someone cordoned it again meanwhile");
                }
                Err(err) => {
                    result
                        .message
                        .push_str(&format!("; uncordoning failed: {}", one_line(&err)));
                }
            }
        }
    }
    Ok(result)
}
