//! Cordoning and uncordoning: `spec.unschedulable`, written with the node's
//! resourceVersion as a precondition so that "was it already cordoned?" is
//! answered about the very version we changed.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::DrainError;

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
    node.spec
        .as_ref()
        .and_then(|spec| spec.unschedulable)
        .unwrap_or(false)
}

/// Sets `spec.unschedulable` to `unschedulable`; returns what it was before.
/// Writes nothing when it already has that value.
pub async fn set_unschedulable(
    client: &kube::Client,
    node: &str,
    unschedulable: bool,
) -> Result<bool, DrainError> {
    let action = if unschedulable {
        "cordoning"
    } else {
        "uncordoning"
    };
    let api = Api::<Node>::all(client.clone());
    for _ in 0..CONFLICT_ATTEMPTS {
        let current = get(client, node).await?;
        let was = is_unschedulable(&current);
        if was == unschedulable {
            return Ok(was);
        }
        // kubectl uncordon removes the field (null) rather than writing false.
        let value = if unschedulable {
            serde_json::Value::Bool(true)
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "spec": { "unschedulable": value },
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node, action, "node updated");
                return Ok(was);
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
