//! Reading Longhorn's custom resources. Only the fields k3sfleet uses are
//! read; anything missing reads as Longhorn's zero value, and a resource
//! kind the API server does not serve means Longhorn is not installed.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::{DrainPolicy, LonghornView, NAMESPACE, Replica, Volume};

const GROUP: &str = "longhorn.io";
const VERSION: &str = "v1beta2";

#[derive(Debug, thiserror::Error)]
pub enum LonghornError {
    #[error("reading Longhorn's {what} failed")]
    Read {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the coordinator may not {action} Longhorn's {what}: its ClusterRole needs get and list \
         on volumes, replicas, nodes and settings in longhorn.io, and patch on nodes \
         (the coordinator's RBAC manifest has them)"
    )]
    Forbidden {
        action: &'static str,
        what: &'static str,
    },
    #[error(
        "Longhorn's node-drain-policy setting is {0:?}, which this version of k3sfleet does not know"
    )]
    UnknownPolicy(String),
}

impl LonghornError {
    /// A failed read may pass (the API was busy); a refusal or an unknown
    /// policy does not.
    pub fn is_transient(&self) -> bool {
        match self {
            LonghornError::Read { source, .. } => crate::drain::is_transient_kube(source),
            LonghornError::Forbidden { .. } | LonghornError::UnknownPolicy(_) => false,
        }
    }

    fn of(action: &'static str, what: &'static str, source: kube::Error) -> LonghornError {
        match &source {
            kube::Error::Api(status) if status.code == 403 => {
                LonghornError::Forbidden { action, what }
            }
            _ => LonghornError::Read { what, source },
        }
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Whether the API server serves Longhorn's volumes: discovery, which
/// every authenticated user may read, so that a coordinator without
/// Longhorn's RBAC on a cluster with Longhorn is told, not misled.
async fn installed(client: &kube::Client) -> Result<bool, LonghornError> {
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "volumes")),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(LonghornError::of("discover", "API group", source)),
    }
}

async fn list(
    client: &kube::Client,
    kind: &str,
    plural: &'static str,
) -> Result<Vec<(String, Value)>, LonghornError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &resource(kind, plural));
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| LonghornError::of("list", plural, source))?;
    Ok(list
        .items
        .into_iter()
        .map(|o| (o.metadata.name.unwrap_or_default(), o.data))
        .collect())
}

/// Longhorn's state now, or `None` when Longhorn is not installed.
pub async fn read(client: &kube::Client) -> Result<Option<LonghornView>, LonghornError> {
    if !installed(client).await? {
        return Ok(None);
    }
    let volumes = list(client, "Volume", "volumes").await?;
    let replicas = list(client, "Replica", "replicas").await?;
    let nodes = list(client, "Node", "nodes").await?;
    let settings = list(client, "Setting", "settings").await?;
    view(&volumes, &replicas, &nodes, &settings).map(Some)
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Builds the view from (name, object) pairs of each kind.
pub fn view(
    volumes: &[(String, Value)],
    replicas: &[(String, Value)],
    nodes: &[(String, Value)],
    settings: &[(String, Value)],
) -> Result<LonghornView, LonghornError> {
    let policy = match settings
        .iter()
        .find(|(name, _)| name == "node-drain-policy")
    {
        Some((_, setting)) => {
            let value = text(setting, "/value");
            DrainPolicy::parse(value).ok_or_else(|| LonghornError::UnknownPolicy(value.into()))?
        }
        None => DrainPolicy::DEFAULT,
    };
    let mut by_volume: BTreeMap<&str, Vec<Replica>> = BTreeMap::new();
    for (name, replica) in replicas {
        let volume = text(replica, "/spec/volumeName");
        by_volume.entry(volume).or_default().push(Replica {
            name: name.clone(),
            node: text(replica, "/spec/nodeID").to_string(),
            healthy: !text(replica, "/spec/healthyAt").is_empty()
                && text(replica, "/spec/failedAt").is_empty(),
            stopped: text(replica, "/spec/desireState") == "stopped"
                && text(replica, "/status/currentState") == "stopped",
        });
    }
    let volumes = volumes
        .iter()
        .map(|(name, volume)| Volume {
            name: name.clone(),
            wanted_replicas: volume
                .pointer("/spec/numberOfReplicas")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32,
            robustness: text(volume, "/status/robustness").to_string(),
            attached_to: Some(text(volume, "/status/currentNodeID"))
                .filter(|node| !node.is_empty() && text(volume, "/status/state") == "attached")
                .map(str::to_string),
            replicas: by_volume.remove(name.as_str()).unwrap_or_default(),
        })
        .collect();
    let nodes = nodes
        .iter()
        .map(|(name, node)| {
            (
                name.clone(),
                node.pointer("/spec/evictionRequested")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            )
        })
        .collect();
    Ok(LonghornView {
        policy,
        nodes,
        volumes,
    })
}

/// Asks Longhorn to move every replica off `node` (`spec.evictionRequested`
/// on its Longhorn Node), or stops asking.
pub async fn request_eviction(
    client: &kube::Client,
    node: &str,
    requested: bool,
) -> Result<(), LonghornError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &resource("Node", "nodes"));
    api.patch(
        node,
        &kube::api::PatchParams {
            field_manager: Some(crate::drain::claim::FIELD_MANAGER.into()),
            ..Default::default()
        },
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"evictionRequested": requested}})),
    )
    .await
    .map(drop)
    .map_err(|source| LonghornError::of("patch", "nodes", source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica(volume: &str, node: &str, healthy: bool) -> Value {
        json!({"spec": {"volumeName": volume, "nodeID": node,
            "healthyAt": if healthy { "2026-12-01T00:00:00Z" } else { "" },
            "failedAt": if healthy { "" } else { "2026-12-01T00:01:00Z" }}})
    }

    #[test]
    fn reads_volumes_replicas_nodes_and_the_policy() {
        let view = view(
            &[(
                "pvc-1".into(),
                json!({"spec": {"numberOfReplicas": 3},
                    "status": {"state": "attached", "currentNodeID": "worker-1", "robustness": "degraded"}}),
            )],
            &[
                ("pvc-1-r-a".into(), replica("pvc-1", "worker-1", true)),
                ("pvc-1-r-b".into(), replica("pvc-1", "worker-2", false)),
            ],
            &[
                ("worker-1".into(), json!({"spec": {"evictionRequested": true}})),
                ("worker-2".into(), json!({"spec": {}})),
            ],
            &[(
                "node-drain-policy".into(),
                json!({"value": "allow-if-replica-is-stopped"}),
            )],
        )
        .unwrap();
        assert_eq!(view.policy, DrainPolicy::AllowIfReplicaIsStopped);
        assert_eq!(view.nodes.get("worker-1"), Some(&true));
        let volume = &view.volumes[0];
        assert_eq!(volume.attached_to.as_deref(), Some("worker-1"));
        assert_eq!(volume.healthy_replicas(), 1);
        assert!(!volume.is_whole());
        assert_eq!(
            volume.describe(),
            "pvc-1 (degraded, 1 of 3 replicas healthy)"
        );
    }

    #[test]
    fn the_default_policy_applies_without_the_setting_and_an_unknown_one_is_an_error() {
        let view = view(&[], &[], &[], &[]).unwrap();
        assert_eq!(view.policy, DrainPolicy::BlockIfContainsLastReplica);
        let err = super::view(
            &[],
            &[],
            &[],
            &[("node-drain-policy".into(), json!({"value": "yolo"}))],
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"yolo\""), "{err}");
    }
}
