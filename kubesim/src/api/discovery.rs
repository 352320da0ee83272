//! Discovery documents: /version, /api, /apis, /apis/{group}, and the resource lists that
//! clients (kubectl's eviction check in particular) read. Aggregated discovery is not served:
//! answering its Accept header with plain JSON lists makes clients fall back to these.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use super::request::{ResourceKind, served};
use super::{Shared, json_response};
use crate::error::ApiError;
use crate::kinds::Kind;
use crate::longhorn::{LonghornNode, Replica, Setting, Volume};

const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

pub async fn version(State(shared): State<Arc<Shared>>) -> Response {
    let git_version = shared.lock().config().kubernetes_version.clone();
    let core = git_version.trim_start_matches('v');
    let mut parts = core.split(['.', '+', '-']);
    let major = parts.next().unwrap_or("1").to_owned();
    let minor = parts.next().unwrap_or("0").to_owned();
    json_response(
        StatusCode::OK,
        &json!({
            "major": major,
            "minor": minor,
            "emulationMajor": major,
            "emulationMinor": minor,
            "gitVersion": git_version,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.6",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
    )
}

pub async fn api_versions(State(shared): State<Arc<Shared>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": shared.server_address }],
        }),
    )
}

fn group_document(longhorn: bool, group: &str) -> Option<Value> {
    let versions: Vec<Value> = served(longhorn)
        .filter(|gv| gv.group == group)
        .map(|gv| json!({ "groupVersion": format!("{}/{}", gv.group, gv.version), "version": gv.version }))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({ "name": group, "versions": versions, "preferredVersion": preferred }))
}

fn groups(longhorn: bool) -> Vec<&'static str> {
    let mut names: Vec<&str> = served(longhorn)
        .map(|gv| gv.group)
        .filter(|g| !g.is_empty())
        .collect();
    names.dedup();
    names
}

pub async fn api_groups(State(shared): State<Arc<Shared>>) -> Response {
    let longhorn = shared.lock().longhorn_installed();
    let groups: Vec<Value> = groups(longhorn)
        .into_iter()
        .filter_map(|g| group_document(longhorn, g))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
    )
}

pub fn group(shared: &Shared, name: &str) -> Response {
    match group_document(shared.lock().longhorn_installed(), name) {
        Some(mut doc) => {
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            json_response(StatusCode::OK, &doc)
        }
        None => ApiError::path_not_found().into_response(),
    }
}

fn resource<K: Kind>() -> Vec<Value> {
    let mut main = json!({
        "name": K::URL_PATH_SEGMENT,
        "singularName": K::SINGULAR,
        "namespaced": K::NAMESPACED,
        "kind": K::KIND,
        "verbs": VERBS,
    });
    if !K::SHORT_NAMES.is_empty() {
        main["shortNames"] = json!(K::SHORT_NAMES);
    }
    if !K::CATEGORIES.is_empty() {
        main["categories"] = json!(K::CATEGORIES);
    }
    let mut list = vec![main];
    if K::HAS_STATUS {
        list.push(json!({
            "name": format!("{}/status", K::URL_PATH_SEGMENT),
            "singularName": "",
            "namespaced": K::NAMESPACED,
            "kind": K::KIND,
            "verbs": STATUS_VERBS,
        }));
    }
    list
}

pub fn resource_list(shared: &Shared, group: &str, version: &str) -> Response {
    let Some(gv) = served(shared.lock().longhorn_installed())
        .find(|gv| gv.group == group && gv.version == version)
    else {
        return ApiError::path_not_found().into_response();
    };
    let mut resources = Vec::new();
    for kind in gv.kinds {
        match kind {
            ResourceKind::Namespace => resources.extend(resource::<Namespace>()),
            ResourceKind::Node => resources.extend(resource::<Node>()),
            ResourceKind::Pod => {
                resources.extend(resource::<Pod>());
                // kubectl drain looks for exactly this entry to decide it may use evictions.
                resources.push(json!({
                    "name": "pods/eviction",
                    "singularName": "",
                    "namespaced": true,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }));
            }
            ResourceKind::PodDisruptionBudget => {
                resources.extend(resource::<PodDisruptionBudget>())
            }
            ResourceKind::Deployment => resources.extend(resource::<Deployment>()),
            ResourceKind::ReplicaSet => resources.extend(resource::<ReplicaSet>()),
            ResourceKind::StatefulSet => resources.extend(resource::<StatefulSet>()),
            ResourceKind::DaemonSet => resources.extend(resource::<DaemonSet>()),
            ResourceKind::LonghornVolume => resources.extend(resource::<Volume>()),
            ResourceKind::LonghornReplica => resources.extend(resource::<Replica>()),
            ResourceKind::LonghornNode => resources.extend(resource::<LonghornNode>()),
            ResourceKind::LonghornSetting => resources.extend(resource::<Setting>()),
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        StatusCode::OK,
        &json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources }),
    )
}
