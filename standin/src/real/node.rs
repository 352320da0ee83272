//! What a starting kubelet does to its Node before KWOK takes over: take the
//! node lease back from the kubelet that ran before (KWOK waits for a lease
//! held by another process to expire; a real kubelet's identity is its node,
//! so it renews at once), register the node if it is not there, and report
//! "kubelet starting" (Ready=False) with the version of the binary that is
//! starting. KWOK's node-initialize stage then reports Ready and keeps that
//! version: the kubelet version a rollout waits for.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::RealHostConfig;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot use kubeconfig {path}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// A client with the node's own identity (`system:node:<name>`).
pub async fn kubelet_client(kubeconfig: &Path) -> Result<kube::Client, NodeError> {
    let file = Kubeconfig::read_from(kubeconfig).map_err(|source| NodeError::Kubeconfig {
        path: kubeconfig.to_owned(),
        source,
    })?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|source| NodeError::Kubeconfig {
            path: kubeconfig.to_owned(),
            source,
        })?;
    // A kubelet gives a request a few seconds and tries again.
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = Some(std::time::Duration::from_secs(10));
    kube::Client::try_from(config).map_err(NodeError::Client)
}

/// Readies the Node for a kubelet of `version` that is about to start.
pub async fn prepare(
    client: &kube::Client,
    config: &RealHostConfig,
    version: &str,
) -> Result<(), NodeError> {
    let api = |what: &str| {
        let what = format!("{what} {}", config.node);
        move |source| NodeError::Api { what, source }
    };
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    match leases.delete(&config.node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => return Err(api("deleting the node lease of")(source)),
    }
    let nodes = Api::<Node>::all(client.clone());
    if nodes
        .get_opt(&config.node)
        .await
        .map_err(api("looking up node"))?
        .is_none()
    {
        let node: Node = serde_json::from_value(registration(config, version))
            .expect("a registration is a Node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(source) => return Err(api("registering node")(source)),
        }
    }
    nodes
        .patch_status(
            &config.node,
            &PatchParams::default(),
            &Patch::Strategic(starting_status(version, &now())),
        )
        .await
        .map_err(api("reporting the kubelet starting on"))?;
    Ok(())
}

fn now() -> serde_json::Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .expect("a time serializes")
}

/// The Node a kubelet registers: its labels, minus those the NodeRestriction
/// admission plugin forbids a kubelet to set (node-role.kubernetes.io/...:
/// K3s's server sets those, or the operator).
pub fn registration(config: &RealHostConfig, version: &str) -> serde_json::Value {
    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        ("kubernetes.io/hostname".into(), config.node.clone()),
        ("kubernetes.io/os".into(), "linux".into()),
        ("kubernetes.io/arch".into(), "amd64".into()),
        ("node.kubernetes.io/instance-type".into(), "k3s".into()),
    ]);
    labels.extend(
        config
            .labels
            .iter()
            .filter(|(key, _)| kubelet_may_set(key))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": config.node, "labels": labels },
        "spec": { "providerID": format!("k3s://{}", config.node) },
        "status": { "nodeInfo": { "kubeletVersion": version, "kubeProxyVersion": version } },
    })
}

/// Ready=False "kubelet is starting", and the version now running.
pub fn starting_status(version: &str, now: &serde_json::Value) -> serde_json::Value {
    json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": "KubeletNotReady",
                "message": "kubelet is starting",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "nodeInfo": { "kubeletVersion": version, "kubeProxyVersion": version },
        }
    })
}

/// NodeRestriction's rule: labels under kubernetes.io and k8s.io are the
/// API server's to set, except these well-known ones.
fn kubelet_may_set(key: &str) -> bool {
    const ALLOWED: [&str; 10] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    ];
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let restricted = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if !restricted("kubernetes.io") && !restricted("k8s.io") {
        return true;
    }
    ALLOWED.contains(&key)
        || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubelet_registers_only_labels_it_may_set() {
        for allowed in [
            "k3sfleet.io/pool",
            "topology.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "app",
        ] {
            assert!(kubelet_may_set(allowed), "{allowed}");
        }
        for forbidden in [
            "node-role.kubernetes.io/worker",
            "node-role.kubernetes.io/control-plane",
            "example.k8s.io/x",
        ] {
            assert!(!kubelet_may_set(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn the_starting_status_carries_the_new_version() {
        let status = starting_status("v1.31.5+k3s1", &json!("2026-01-01T00:00:00Z"));
        assert_eq!(
            status["status"]["nodeInfo"]["kubeletVersion"],
            "v1.31.5+k3s1"
        );
        assert_eq!(status["status"]["conditions"][0]["status"], "False");
    }
}
