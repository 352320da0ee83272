//! The Eviction API: which version the server speaks (discovery, as kubectl's
//! CheckEvictionSupport does it), and one eviction request.
//!
//! kube's own `Api::evict` sends no apiVersion/kind and a snake_case
//! `delete_options`, which a real API server ignores (grace periods would be
//! lost), so the request is built here as kubectl builds it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

use super::DrainError;

/// The Eviction API group version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionVersion {
    /// Kubernetes 1.22 and later.
    V1,
    /// Older servers (and what kubectl 1.20 speaks).
    V1Beta1,
}

impl EvictionVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            EvictionVersion::V1 => "policy/v1",
            EvictionVersion::V1Beta1 => "policy/v1beta1",
        }
    }
}

/// Reads the `pods/eviction` entry of the core v1 resource list: its group and
/// version say which Eviction the server accepts. `None`: no Eviction API.
pub fn version_from(resources: &APIResourceList) -> Option<EvictionVersion> {
    let eviction = resources
        .resources
        .iter()
        .find(|r| r.name == "pods/eviction" && r.kind == "Eviction")?;
    match (eviction.group.as_deref(), eviction.version.as_deref()) {
        (Some("policy"), Some("v1")) => Some(EvictionVersion::V1),
        // Servers older than 1.8 list no group/version; they speak v1beta1.
        (Some("policy"), Some("v1beta1")) | (None | Some(""), None | Some("")) => {
            Some(EvictionVersion::V1Beta1)
        }
        _ => None,
    }
}

pub async fn discover(client: &kube::Client) -> Result<EvictionVersion, DrainError> {
    let resources = client
        .list_core_api_resources("v1")
        .await
        .map_err(|source| {
            DrainError::kubernetes("reading the API server's resource list (/api/v1)", source)
        })?;
    let version = version_from(&resources).ok_or(DrainError::NoEvictionApi)?;
    tracing::debug!(
        api_version = version.api_version(),
        "Eviction API discovered"
    );
    Ok(version)
}

/// The pod to evict, as it was when the drain planned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodId {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The Eviction body kubectl sends, with a UID precondition so that a pod
/// recreated under the same name is never evicted in its predecessor's place.
pub fn body(
    pod: &PodId,
    version: EvictionVersion,
    grace_period_seconds: Option<i64>,
) -> serde_json::Value {
    let mut delete_options = serde_json::json!({ "preconditions": { "uid": pod.uid } });
    if let Some(seconds) = grace_period_seconds {
        delete_options["gracePeriodSeconds"] = seconds.into();
    }
    serde_json::json!({
        "apiVersion": version.api_version(),
        "kind": "Eviction",
        "metadata": { "name": pod.name, "namespace": pod.namespace },
        "deleteOptions": delete_options,
    })
}

/// POSTs one eviction. `Ok` means the server accepted it.
pub async fn evict(
    client: &kube::Client,
    pod: &PodId,
    version: EvictionVersion,
    grace_period_seconds: Option<i64>,
) -> Result<(), kube::Error> {
    let body = body(pod, version, grace_period_seconds);
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{}/pods/{}/eviction",
        pod.namespace, pod.name
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
    .map_err(kube::Error::HttpError)?;
    client.request_text(request).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn list(group: Option<&str>, version: Option<&str>) -> APIResourceList {
        APIResourceList {
            group_version: "v1".into(),
            resources: vec![
                APIResource {
                    name: "pods".into(),
                    kind: "Pod".into(),
                    namespaced: true,
                    ..Default::default()
                },
                APIResource {
                    name: "pods/eviction".into(),
                    kind: "Eviction".into(),
                    group: group.map(Into::into),
                    version: version.map(Into::into),
                    namespaced: true,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn discovery_picks_the_version_the_server_lists() {
        assert_eq!(
            version_from(&list(Some("policy"), Some("v1"))),
            Some(EvictionVersion::V1)
        );
        assert_eq!(
            version_from(&list(Some("policy"), Some("v1beta1"))),
            Some(EvictionVersion::V1Beta1)
        );
        assert_eq!(
            version_from(&list(None, None)),
            Some(EvictionVersion::V1Beta1)
        );
        assert_eq!(version_from(&list(Some("policy"), Some("v2"))), None);
        let mut without = list(None, None);
        without.resources.pop();
        assert_eq!(version_from(&without), None);
    }

    #[test]
    fn the_body_is_what_kubectl_sends_plus_a_uid_precondition() {
        let pod = PodId {
            namespace: "shop".into(),
            name: "db-0".into(),
            uid: "u-1".into(),
        };
        assert_eq!(
            body(&pod, EvictionVersion::V1Beta1, Some(0)),
            serde_json::json!({
                "apiVersion": "policy/v1beta1",
                "kind": "Eviction",
                "metadata": { "name": "db-0", "namespace": "shop" },
                "deleteOptions": { "gracePeriodSeconds": 0, "preconditions": { "uid": "u-1" } },
            })
        );
        let own_grace = body(&pod, EvictionVersion::V1, None);
        assert_eq!(own_grace["apiVersion"], "policy/v1");
        assert!(
            own_grace["deleteOptions"]
                .get("gracePeriodSeconds")
                .is_none()
        );
    }
}
