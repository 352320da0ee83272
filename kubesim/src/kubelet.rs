//! Request bodies a stand-in kubelet sends: node registration and status reports.
//! Plain JSON so callers can send them with any HTTP client (or kube-rs `Patch::Strategic`).

use serde_json::{Value, json};

use crate::time::Now;

/// Content type of [`ready_status_patch`] bodies.
pub const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";

/// A `Node` for `POST /api/v1/nodes`. Servers get K3s' role labels.
pub fn registration(name: &str, server: bool, kubelet_version: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "k3s",
    });
    if server {
        for role in ["control-plane", "etcd", "master"] {
            labels[format!("node-role.kubernetes.io/{role}")] = json!("true");
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
        "spec": { "providerID": format!("k3s://{name}") },
        "status": { "nodeInfo": { "kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version } },
    })
}

/// A strategic-merge patch for `PATCH /api/v1/nodes/{name}/status`: Ready (or not) with a
/// fresh heartbeat, and the running kubelet version.
pub fn ready_status_patch(ready: bool, kubelet_version: &str, now: &Now) -> Value {
    let time = now.wall.to_string();
    let (status, reason, message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        ("False", "KubeletNotReady", "container runtime is down")
    };
    json!({
        "status": {
            "$setElementOrder/conditions": [{ "type": "Ready" }],
            "conditions": [{
                "type": "Ready",
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": time,
                "lastTransitionTime": time,
            }],
            "nodeInfo": { "kubeletVersion": kubelet_version, "kubeProxyVersion": kubelet_version },
        }
    })
}
