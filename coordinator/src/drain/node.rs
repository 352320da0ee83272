//! Cordoning and uncordoning under a claim ([`super::claim`]): every write is
//! one PATCH with the node's resourceVersion as a precondition, so "who holds
//! this cordon?" is answered about the very version we change, and a write
//! that took effect but whose answer was lost is recognised on the retry (the
//! claim is there and it is ours).

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::DrainError;
use super::claim::{self, Claim, CordonState, Owner};

/// A node changing under us this many times in a row is not going to settle.
const CONFLICT_ATTEMPTS: usize = 5;

pub async fn get(client: &kube::Client, node: &str) -> Result<Node, DrainError> {
    Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .map_err(|source| DrainError::kubernetes(format!("reading node {node}"), source))?
        .ok_or_else(|| DrainError::NodeNotFound {
            node: node.to_string(),
        })
}

pub fn is_unschedulable(node: &Node) -> bool {
    claim::is_unschedulable(node)
}

/// What a cordon under a claim found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cordoned {
    /// It was schedulable; now it is cordoned under our claim.
    Now,
    /// It was cordoned under our claim already (an earlier try took effect).
    Already,
    /// It is cordoned under another k3sfleet claim; nothing was changed.
    ClaimedBy(Claim),
    /// Someone else cordoned it; nothing was changed and it is not ours to lift.
    Foreign,
}

/// What an uncordon under a claim found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncordoned {
    /// Our cordon is lifted.
    Now,
    /// It was schedulable already.
    Already,
    /// It is cordoned, but not under our claim: left as it is.
    NotOurs(CordonState),
}

/// Cordons `node` under `owner`'s claim unless it is cordoned already.
pub async fn cordon(
    client: &kube::Client,
    node: &str,
    owner: &Owner,
    now: jiff::Timestamp,
) -> Result<Cordoned, DrainError> {
    let claim = Claim::new(owner.clone(), now);
    write(client, node, "cordoning", |current| {
        match CordonState::of(current) {
            CordonState::Schedulable => Step::Patch(
                claim::cordon_patch(current.metadata.resource_version.as_deref(), &claim),
                Cordoned::Now,
            ),
            CordonState::Claimed(held) if held.owner == *owner => Step::Done(Cordoned::Already),
            CordonState::Claimed(held) => Step::Done(Cordoned::ClaimedBy(held)),
            CordonState::Foreign => Step::Done(Cordoned::Foreign),
        }
    })
    .await
}

/// Lifts `node`'s cordon if `owner` holds it; otherwise leaves it. A stale
/// claim on a schedulable node (someone uncordoned it) is removed.
pub async fn uncordon(
    client: &kube::Client,
    node: &str,
    owner: &Owner,
) -> Result<Uncordoned, DrainError> {
    write(client, node, "uncordoning", |current| {
        let version = current.metadata.resource_version.as_deref();
        match CordonState::of(current) {
            CordonState::Claimed(held) if held.owner == *owner => {
                Step::Patch(claim::uncordon_patch(version), Uncordoned::Now)
            }
            CordonState::Schedulable if has_claim_annotation(current) => {
                Step::Patch(claim::claim_patch(version, None), Uncordoned::Already)
            }
            CordonState::Schedulable => Step::Done(Uncordoned::Already),
            other => Step::Done(Uncordoned::NotOurs(other)),
        }
    })
    .await
}

/// Lifts whatever cordon `node` has: an operator's explicit `k3sfleet
/// uncordon`. Returns how it was cordoned.
pub async fn uncordon_any(client: &kube::Client, node: &str) -> Result<CordonState, DrainError> {
    write(client, node, "uncordoning", |current| {
        let state = CordonState::of(current);
        let version = current.metadata.resource_version.as_deref();
        if state == CordonState::Schedulable && !has_claim_annotation(current) {
            Step::Done(state)
        } else {
            Step::Patch(claim::uncordon_patch(version), state)
        }
    })
    .await
}

/// Hands the cordon held under `from` to `to` (a new drain taking over what
/// an earlier one left). Refuses if the node no longer carries `from`.
pub async fn adopt(
    client: &kube::Client,
    node: &str,
    from: &Claim,
    to: &Owner,
    now: jiff::Timestamp,
) -> Result<Cordoned, DrainError> {
    let claim = Claim::new(to.clone(), now);
    write(
        client,
        node,
        "taking over the cordon of",
        |current| match CordonState::of(current) {
            CordonState::Claimed(held) if held == *from => Step::Patch(
                claim::claim_patch(current.metadata.resource_version.as_deref(), Some(&claim)),
                Cordoned::Already,
            ),
            CordonState::Claimed(held) if held.owner == *to => Step::Done(Cordoned::Already),
            CordonState::Claimed(held) => Step::Done(Cordoned::ClaimedBy(held)),
            CordonState::Foreign => Step::Done(Cordoned::Foreign),
            CordonState::Schedulable => Step::Patch(
                claim::cordon_patch(current.metadata.resource_version.as_deref(), &claim),
                Cordoned::Now,
            ),
        },
    )
    .await
}

fn has_claim_annotation(node: &Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(claim::CLAIM_ANNOTATION))
}

/// What to do with the node as read.
enum Step<T> {
    Done(T),
    Patch(serde_json::Value, T),
}

/// Reads the node, decides, and writes with its resourceVersion as the
/// precondition; on a conflict, reads and decides again.
async fn write<T>(
    client: &kube::Client,
    node: &str,
    action: &'static str,
    decide: impl Fn(&Node) -> Step<T>,
) -> Result<T, DrainError> {
    let api = Api::<Node>::all(client.clone());
    let params = PatchParams {
        field_manager: Some(claim::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for _ in 0..CONFLICT_ATTEMPTS {
        let current = get(client, node).await?;
        let (patch, outcome) = match decide(&current) {
            Step::Done(outcome) => return Ok(outcome),
            Step::Patch(patch, outcome) => (patch, outcome),
        };
        match api.patch(node, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(node, action, "node updated");
                return Ok(outcome);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(DrainError::NodeNotFound {
                    node: node.to_string(),
                });
            }
            Err(source) => {
                return Err(DrainError::kubernetes(format!("{action} {node}"), source));
            }
        }
    }
    Err(DrainError::Conflict {
        node: node.to_string(),
        action,
    })
}
