//! A whole drain as an operator asks for it: cordon (remembering whether the
//! node already was), drain, and when the drain does not finish, apply the
//! operator's policy, never uncordoning a node someone else cordoned.

use k3sfleet_proto::v1::{Cordoned, DrainEvent, DrainOutcome, DrainResult, drain_event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::one_line;
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

/// Cordons `node`, drains it, applies `on_timeout` if the drain did not
/// finish, and returns the result with `left_cordoned` filled in. `Err` only
/// when cordoning failed (nothing was changed).
pub async fn cordon_and_drain(
    engine: &DrainEngine,
    node: &str,
    options: &DrainOptions,
    on_timeout: TimeoutPolicy,
    events: mpsc::Sender<DrainEvent>,
    cancel: CancellationToken,
) -> Result<DrainResult, DrainError> {
    let cordon = engine.cordon(node).await?;
    let _ = events
        .send(DrainEvent {
            event: Some(drain_event::Event::Cordoned(Cordoned {
                node: node.to_string(),
                was_unschedulable: cordon.was_unschedulable,
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
        if cordon.was_unschedulable {
            result
                .message
                .push_str("; left cordoned: it was cordoned before this drain");
        } else {
            match engine.uncordon(node).await {
                Ok(_) => {
                    result.left_cordoned = false;
                    result.message.push_str("; uncordoned");
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
