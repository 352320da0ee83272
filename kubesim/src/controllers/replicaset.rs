//! ReplicaSets keep `replicas` active pods: a lost pod is replaced after the scenario's
//! replacement delay (the new pod is Pending until the scheduler places it); extra pods are
//! terminated.

use k8s_openapi::api::apps::v1::ReplicaSet;

use super::templates::{controller_ref, is_controlled_by, pod_from_template};
use crate::cluster::Cluster;
use crate::cluster::pods::{is_terminating, phase};
use crate::time::Now;

pub(super) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let sets: Vec<_> = cluster.replicasets.iter().cloned().collect();
    for rs in sets {
        changed |= sync_one(cluster, &rs, now);
    }
    changed
}

fn sync_one(cluster: &mut Cluster, rs: &ReplicaSet, now: &Now) -> bool {
    let meta = &rs.metadata;
    let (Some(namespace), Some(uid), Some(name), Some(spec)) =
        (&meta.namespace, &meta.uid, &meta.name, &rs.spec)
    else {
        return false;
    };
    let Some(template) = &spec.template else {
        return false;
    };
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut active: Vec<_> = cluster
        .pods
        .in_namespace(namespace)
        .filter(|p| is_controlled_by(&p.metadata, uid))
        .filter(|p| !is_terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .cloned()
        .collect();
    if active.len() >= desired {
        cluster.sim.replacement_not_needed(uid, "");
    }
    if active.len() > desired {
        // Scale down: newest first, as the ReplicaSet controller prefers.
        active.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
        for pod in active.iter().take(active.len() - desired) {
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            cluster.terminate_pod(pod, grace, now);
        }
        return true;
    }
    if active.len() == desired {
        return false;
    }
    let delay = cluster.replacement_delay();
    if !cluster.sim.replacement_is_due(uid, "", delay, now) {
        return false;
    }
    let missing = desired - active.len();
    for _ in 0..missing {
        let pod_name = format!("{name}-{}", cluster.random_suffix(5));
        let pod = pod_from_template(
            template,
            namespace,
            &pod_name,
            controller_ref("apps/v1", "ReplicaSet", meta),
        );
        match cluster.create(pod, now) {
            Ok(_) if !cluster.sim.bootstrapping => cluster.stats_mut().pods_recreated += 1,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "replicaset controller could not create a pod"),
        }
    }
    true
}
