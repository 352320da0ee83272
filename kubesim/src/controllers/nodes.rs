//! Node lifecycle (optional, `timings.node_monitor_grace`): a node whose kubelet runs outside
//! the simulator and stops reporting status goes Ready=Unknown after the grace period, as the
//! node lifecycle controller does ("Kubelet stopped posting node status.").

use k8s_openapi::api::core::v1::Node;

use crate::cluster::Cluster;
use crate::time::Now;

pub(super) fn monitor_heartbeats(cluster: &mut Cluster, now: &Now) -> bool {
    let Some(grace_seconds) = cluster.config.timings.node_monitor_grace else {
        return false;
    };
    let grace = cluster.config.scale.wall(grace_seconds);
    let mut changed = false;
    let heartbeats: Vec<_> = cluster
        .sim
        .external_kubelets
        .iter()
        .map(|(n, t)| (n.clone(), *t))
        .collect();
    for (name, last) in heartbeats {
        let deadline = last + grace;
        if now.instant < deadline {
            cluster.sim.wake_at(deadline);
            continue;
        }
        let Some(node) = cluster.nodes.get("", &name).cloned() else {
            continue;
        };
        if let Some(stale) = mark_unknown(&node, now) {
            tracing::info!(node = %name, "kubelet stopped posting node status");
            cluster.write(stale);
            changed = true;
        }
    }
    changed
}

/// The node with every condition Unknown, or `None` if it already is.
pub fn mark_unknown(node: &Node, now: &Now) -> Option<Node> {
    let mut node = node.clone();
    let conditions = node.status.as_mut()?.conditions.as_mut()?;
    if conditions.iter().all(|c| c.status == "Unknown") {
        return None;
    }
    for condition in conditions.iter_mut() {
        condition.status = "Unknown".into();
        condition.reason = Some("NodeStatusUnknown".into());
        condition.message = Some("Kubelet stopped posting node status.".into());
        condition.last_transition_time = Some(now.time());
    }
    Some(node)
}
