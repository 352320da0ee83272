//! Parsing request paths and queries into what the API server acts on.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::error::ApiError;
use crate::longhorn::{LonghornNode, Replica, Setting, Volume};
use k8s_openapi::Resource;

/// The kinds served, for dispatching to generic handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Node,
    Pod,
    Namespace,
    PodDisruptionBudget,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    LonghornVolume,
    LonghornReplica,
    LonghornNode,
    LonghornSetting,
}

/// A group/version the server serves and the kinds in it.
pub struct GroupVersion {
    pub group: &'static str,
    pub version: &'static str,
    pub kinds: &'static [ResourceKind],
    /// Served only while Longhorn's CRDs are installed (the scenario's `[longhorn]`).
    pub longhorn: bool,
}

/// The group/versions served, with Longhorn's when it is installed.
pub fn served(longhorn: bool) -> impl Iterator<Item = &'static GroupVersion> {
    SERVED.iter().filter(move |gv| longhorn || !gv.longhorn)
}

pub const SERVED: &[GroupVersion] = &[
    GroupVersion {
        group: "",
        version: "v1",
        kinds: &[
            ResourceKind::Namespace,
            ResourceKind::Node,
            ResourceKind::Pod,
        ],
        longhorn: false,
    },
    GroupVersion {
        group: "apps",
        version: "v1",
        kinds: &[
            ResourceKind::DaemonSet,
            ResourceKind::Deployment,
            ResourceKind::ReplicaSet,
            ResourceKind::StatefulSet,
        ],
        longhorn: false,
    },
    GroupVersion {
        group: "policy",
        version: "v1",
        kinds: &[ResourceKind::PodDisruptionBudget],
        longhorn: false,
    },
    // Removed from real servers in 1.25, served here for old clients; same schema as v1.
    GroupVersion {
        group: "policy",
        version: "v1beta1",
        kinds: &[ResourceKind::PodDisruptionBudget],
        longhorn: false,
    },
    // Longhorn's CRDs (deploy/longhorn.yaml): the storage version k3sfleet reads.
    GroupVersion {
        group: crate::longhorn::kinds::GROUP,
        version: crate::longhorn::kinds::VERSION,
        kinds: &[
            ResourceKind::LonghornNode,
            ResourceKind::LonghornReplica,
            ResourceKind::LonghornSetting,
            ResourceKind::LonghornVolume,
        ],
        longhorn: true,
    },
];

impl ResourceKind {
    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::Node => Node::URL_PATH_SEGMENT,
            ResourceKind::Pod => Pod::URL_PATH_SEGMENT,
            ResourceKind::Namespace => Namespace::URL_PATH_SEGMENT,
            ResourceKind::PodDisruptionBudget => PodDisruptionBudget::URL_PATH_SEGMENT,
            ResourceKind::Deployment => Deployment::URL_PATH_SEGMENT,
            ResourceKind::ReplicaSet => ReplicaSet::URL_PATH_SEGMENT,
            ResourceKind::StatefulSet => StatefulSet::URL_PATH_SEGMENT,
            ResourceKind::DaemonSet => DaemonSet::URL_PATH_SEGMENT,
            ResourceKind::LonghornVolume => Volume::URL_PATH_SEGMENT,
            ResourceKind::LonghornReplica => Replica::URL_PATH_SEGMENT,
            ResourceKind::LonghornNode => LonghornNode::URL_PATH_SEGMENT,
            ResourceKind::LonghornSetting => Setting::URL_PATH_SEGMENT,
        }
    }

    pub fn is_longhorn(self) -> bool {
        matches!(
            self,
            ResourceKind::LonghornVolume
                | ResourceKind::LonghornReplica
                | ResourceKind::LonghornNode
                | ResourceKind::LonghornSetting
        )
    }

    fn lookup(group: &str, version: &str, plural: &str) -> Option<Self> {
        SERVED
            .iter()
            .find(|gv| gv.group == group && gv.version == version)?
            .kinds
            .iter()
            .copied()
            .find(|k| k.plural() == plural)
    }
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: ResourceKind,
    /// `group/version` or `v1`, as objects are served on this path.
    pub api_version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` or `/apis/{group}/{version}/...` past the version.
pub fn parse_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        // `namespaces/{name}/status` is the namespace's own subresource, not a collection.
        ["namespaces", ns, plural, tail @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(ApiError::path_not_found()),
    };
    let kind = ResourceKind::lookup(group, version, plural).ok_or_else(ApiError::path_not_found)?;
    let api_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(Target {
        kind,
        api_version,
        namespace,
        name,
        subresource,
    })
}

/// Query parameters (last value wins).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded_pairs(raw.unwrap_or_default()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid value {v:?} for query parameter {key}"))
                })
            })
            .transpose()
    }
}

fn form_urlencoded_pairs(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_paths() {
        let t = parse_target(
            "",
            "v1",
            &["namespaces", "shop", "pods", "web-1", "eviction"],
        )
        .unwrap();
        assert_eq!(t.kind, ResourceKind::Pod);
        assert_eq!(
            (
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            (Some("shop"), Some("web-1"), Some("eviction"))
        );
        let t = parse_target("", "v1", &["nodes", "a", "status"]).unwrap();
        assert_eq!(
            (t.kind, t.subresource.as_deref()),
            (ResourceKind::Node, Some("status"))
        );
        let t = parse_target("", "v1", &["namespaces", "shop"]).unwrap();
        assert_eq!(
            (t.kind, t.name.as_deref(), t.namespace),
            (ResourceKind::Namespace, Some("shop"), None)
        );
        let t = parse_target("", "v1", &["pods"]).unwrap();
        assert_eq!((t.kind, t.namespace), (ResourceKind::Pod, None));
    }

    #[test]
    fn group_paths() {
        let t = parse_target(
            "policy",
            "v1beta1",
            &["namespaces", "a", "poddisruptionbudgets"],
        )
        .unwrap();
        assert_eq!(
            (t.kind, t.api_version.as_str()),
            (ResourceKind::PodDisruptionBudget, "policy/v1beta1")
        );
        assert!(parse_target("apps", "v1", &["pods"]).is_err());
        assert!(parse_target("", "v1", &["nodes", "a", "b", "c"]).is_err());
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "fieldSelector=spec.nodeName%3Dworker-01&labelSelector=app+in+(a%2Cb)&watch=1&x=%zz",
        ));
        assert_eq!(q.get("fieldSelector"), Some("spec.nodeName=worker-01"));
        assert_eq!(q.get("labelSelector"), Some("app in (a,b)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
    }
}
