//! Who cordoned a node, written on the Node itself.
//!
//! A cordon remembered only in the coordinator's database cannot be told
//! apart from an operator's once that memory is gone or stale (kured and
//! brupop keep theirs on the Node for the same reason). k3sfleet writes an
//! annotation naming the owner and the time in the same PATCH that sets
//! `spec.unschedulable`, and removes both in the same PATCH that lifts it,
//! each with the node's resourceVersion as a precondition.
//!
//! A cordon is k3sfleet's only while the node is unschedulable, the
//! annotation is there, and (where the API server tracks field ownership, as
//! every real one does) k3sfleet is the manager that set
//! `spec.unschedulable`: an operator who uncordons and cordons again with
//! kubectl owns the new cordon even though our annotation lingers.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

/// The annotation holding the claim, as JSON: `{"owner":"rollout/12","at":"2026-..."}`.
pub const CLAIM_ANNOTATION: &str = "k3sfleet.io/cordoned-by";
/// The field manager of every write k3sfleet makes to a Node.
pub const FIELD_MANAGER: &str = "k3sfleet";

/// Who holds a cordon.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A rolling upgrade, by id.
    Rollout(u64),
    /// An operator's `k3sfleet drain`, by the caller's audit name.
    Drain(String),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Rollout(id) => write!(f, "rollout/{id}"),
            Owner::Drain(actor) => write!(f, "drain/{actor}"),
        }
    }
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some(("rollout", id)) => id
                .parse()
                .map(Owner::Rollout)
                .map_err(|_| format!("invalid rollout id in owner {text:?}")),
            Some(("drain", actor)) if !actor.is_empty() => Ok(Owner::Drain(actor.to_string())),
            _ => Err(format!(
                "invalid owner {text:?}: expected rollout/<id> or drain/<who>"
            )),
        }
    }
}

/// A k3sfleet cordon: who and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: Owner,
    /// RFC 3339, as written.
    pub at: String,
}

#[derive(Serialize, Deserialize)]
struct ClaimJson {
    owner: String,
    at: String,
}

impl Claim {
    pub fn new(owner: Owner, at: jiff::Timestamp) -> Claim {
        Claim {
            owner,
            at: at.to_string(),
        }
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(&ClaimJson {
            owner: self.owner.to_string(),
            at: self.at.clone(),
        })
        .expect("two strings serialize")
    }

    /// Reads an annotation's value; a value someone else mangled is no claim.
    pub fn from_annotation(text: &str) -> Option<Claim> {
        let json: ClaimJson = serde_json::from_str(text).ok()?;
        Some(Claim {
            owner: json.owner.parse().ok()?,
            at: json.at,
        })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} since {}", self.owner, self.at)
    }
}

/// How a node is cordoned right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonState {
    Schedulable,
    /// Cordoned by k3sfleet, under this claim.
    Claimed(Claim),
    /// Cordoned by someone else (an operator, another tool).
    Foreign,
}

impl CordonState {
    pub fn of(node: &Node) -> CordonState {
        if !is_unschedulable(node) {
            return CordonState::Schedulable;
        }
        let claim = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLAIM_ANNOTATION))
            .and_then(|text| Claim::from_annotation(text));
        match claim {
            Some(claim) if unschedulable_set_by_us(node) != Some(false) => {
                CordonState::Claimed(claim)
            }
            _ => CordonState::Foreign,
        }
    }

    pub fn claim(&self) -> Option<&Claim> {
        match self {
            CordonState::Claimed(claim) => Some(claim),
            _ => None,
        }
    }
}

pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

/// Whether k3sfleet is the manager that set `spec.unschedulable`, from the
/// node's managedFields; `None` when no manager is recorded for that field
/// (an API server that does not track field ownership).
fn unschedulable_set_by_us(node: &Node) -> Option<bool> {
    let entries = node.metadata.managed_fields.as_ref()?;
    let mut owners = entries.iter().filter(|entry| {
        entry.subresource.as_deref().unwrap_or("").is_empty()
            && entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0["f:spec"].get("f:unschedulable").is_some())
    });
    let first = owners.next()?;
    let ours = |manager: &Option<String>| manager.as_deref() == Some(FIELD_MANAGER);
    Some(ours(&first.manager) && owners.all(|entry| ours(&entry.manager)))
}

/// The body of the PATCH that cordons under `claim` (with the node's
/// resourceVersion as a precondition).
pub fn cordon_patch(resource_version: Option<&str>, claim: &Claim) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { CLAIM_ANNOTATION: claim.to_annotation() },
        },
        "spec": { "unschedulable": true },
    })
}

/// The body of the PATCH that lifts a cordon and its claim. kubectl uncordon
/// removes the field (null) rather than writing false; so does this.
pub fn uncordon_patch(resource_version: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { CLAIM_ANNOTATION: null },
        },
        "spec": { "unschedulable": null },
    })
}

/// The body of the PATCH that hands a claim to a new owner, or removes a
/// claim left on a node someone made schedulable (`None`).
pub fn claim_patch(resource_version: Option<&str>, claim: Option<&Claim>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": { CLAIM_ANNOTATION: claim.map(Claim::to_annotation) },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn node(unschedulable: bool, claim: Option<&Claim>, managers: &[&str]) -> Node {
        let mut node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                unschedulable: unschedulable.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(claim) = claim {
            node.metadata.annotations = Some(
                [(CLAIM_ANNOTATION.to_string(), claim.to_annotation())]
                    .into_iter()
                    .collect(),
            );
        }
        node.metadata.managed_fields = Some(
            managers
                .iter()
                .map(|manager| ManagedFieldsEntry {
                    manager: Some(manager.to_string()),
                    operation: Some("Update".into()),
                    fields_v1: Some(FieldsV1(
                        serde_json::json!({"f:spec": {"f:unschedulable": {}}}),
                    )),
                    ..Default::default()
                })
                .collect(),
        );
        node
    }

    fn claim(owner: Owner) -> Claim {
        Claim::new(owner, "2026-12-01T20:00:00Z".parse().unwrap())
    }

    #[test]
    fn owners_and_claims_round_trip_and_mangled_ones_are_no_claim() {
        for owner in [Owner::Rollout(12), Owner::Drain("admin:alice".into())] {
            assert_eq!(owner.to_string().parse::<Owner>().unwrap(), owner);
            let claim = claim(owner);
            assert_eq!(
                Claim::from_annotation(&claim.to_annotation()),
                Some(claim.clone())
            );
        }
        for bad in ["", "rollout/x", "drain/", "kured/1", "{}"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad:?}");
            assert_eq!(Claim::from_annotation(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_cordon_is_ours_only_while_we_set_it_and_our_claim_is_there() {
        let ours = claim(Owner::Rollout(3));
        assert_eq!(
            CordonState::of(&node(true, Some(&ours), &[FIELD_MANAGER])),
            CordonState::Claimed(ours.clone())
        );
        // No field-ownership records (a server that does not keep them): the annotation decides.
        assert_eq!(
            CordonState::of(&node(true, Some(&ours), &[])),
            CordonState::Claimed(ours.clone())
        );
        // Uncordoned by someone: schedulable, whatever the annotation says.
        assert_eq!(
            CordonState::of(&node(false, Some(&ours), &[])),
            CordonState::Schedulable
        );
        // Uncordoned and cordoned again with kubectl: the operator's cordon.
        assert_eq!(
            CordonState::of(&node(true, Some(&ours), &["kubectl-cordon"])),
            CordonState::Foreign
        );
        // Cordoned by an operator from the start.
        assert_eq!(
            CordonState::of(&node(true, None, &["kubectl-cordon"])),
            CordonState::Foreign
        );
    }
}
