//! DaemonSets run one pod on every node their node selector and taints allow. Their pods are
//! bound to the node directly (they bypass the scheduler and ignore `unschedulable`, as real
//! DaemonSet pods tolerate `node.kubernetes.io/unschedulable`).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;

use super::scheduler::{node_selector_matches, taints_tolerated};
use super::templates::{controller_ref, is_controlled_by, pod_from_template};
use crate::cluster::Cluster;
use crate::cluster::pods::{is_terminating, node_name};
use crate::time::Now;

pub(super) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let sets: Vec<_> = cluster.daemonsets.iter().cloned().collect();
    for ds in sets {
        changed |= sync_one(cluster, &ds, now);
    }
    changed
}

/// Whether a DaemonSet with this template wants a pod on `node`.
pub fn wants_node(ds: &DaemonSet, node: &Node) -> bool {
    let Some(pod_spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    node_selector_matches(pod_spec, node) && taints_tolerated(pod_spec, node)
}

fn sync_one(cluster: &mut Cluster, ds: &DaemonSet, now: &Now) -> bool {
    let meta = &ds.metadata;
    let (Some(namespace), Some(uid), Some(name), Some(spec)) =
        (&meta.namespace, &meta.uid, &meta.name, &ds.spec)
    else {
        return false;
    };
    let mut changed = false;
    let wanted: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| wants_node(ds, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for node in &wanted {
        let running = cluster.pods.in_namespace(namespace).any(|p| {
            is_controlled_by(&p.metadata, uid)
                && !is_terminating(p)
                && node_name(p) == Some(node.as_str())
        });
        if running {
            cluster.sim.replacement_not_needed(uid, node);
            continue;
        }
        let delay = cluster.replacement_delay();
        if !cluster.sim.replacement_is_due(uid, node, delay, now) {
            continue;
        }
        let pod_name = format!("{name}-{}", cluster.random_suffix(5));
        let mut pod = pod_from_template(
            &spec.template,
            namespace,
            &pod_name,
            controller_ref("apps/v1", "DaemonSet", meta),
        );
        pod.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
        match cluster.create(pod, now) {
            Ok(_) if !cluster.sim.bootstrapping => cluster.stats_mut().pods_recreated += 1,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "daemonset controller could not create a pod"),
        }
        changed = true;
    }
    let orphaned: Vec<_> = cluster
        .pods
        .in_namespace(namespace)
        .filter(|p| is_controlled_by(&p.metadata, uid) && !is_terminating(p))
        .filter(|p| node_name(p).is_none_or(|n| !wanted.iter().any(|w| w == n)))
        .cloned()
        .collect();
    for pod in orphaned {
        cluster.terminate_pod(&pod, 0, now);
        changed = true;
    }
    changed
}
