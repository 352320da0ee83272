//! StatefulSets keep pods `<name>-0 .. <name>-(n-1)`. A lost pod comes back under the same
//! name with a new UID, only once the old one is fully gone, after the replacement delay.
//! Pods are managed in parallel (podManagementPolicy: Parallel).

use k8s_openapi::api::apps::v1::StatefulSet;

use super::templates::{controller_ref, is_controlled_by, pod_from_template};
use crate::cluster::Cluster;
use crate::time::Now;

pub(super) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let sets: Vec<_> = cluster.statefulsets.iter().cloned().collect();
    for sts in sets {
        changed |= sync_one(cluster, &sts, now);
    }
    changed
}

fn sync_one(cluster: &mut Cluster, sts: &StatefulSet, now: &Now) -> bool {
    let meta = &sts.metadata;
    let (Some(namespace), Some(uid), Some(name), Some(spec)) =
        (&meta.namespace, &meta.uid, &meta.name, &sts.spec)
    else {
        return false;
    };
    let desired = spec.replicas.unwrap_or(1).max(0);
    let mut changed = false;
    for ordinal in 0..desired {
        let pod_name = format!("{name}-{ordinal}");
        let slot = ordinal.to_string();
        if cluster.pods.get(namespace, &pod_name).is_some() {
            cluster.sim.replacement_not_needed(uid, &slot);
            continue;
        }
        let delay = cluster.replacement_delay();
        if !cluster.sim.replacement_is_due(uid, &slot, delay, now) {
            continue;
        }
        let mut pod = pod_from_template(
            &spec.template,
            namespace,
            &pod_name,
            controller_ref("apps/v1", "StatefulSet", meta),
        );
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(
            "statefulset.kubernetes.io/pod-name".into(),
            pod_name.clone(),
        );
        labels.insert("apps.kubernetes.io/pod-index".into(), slot.clone());
        if let Some(pod_spec) = pod.spec.as_mut() {
            pod_spec.hostname = Some(pod_name.clone());
            pod_spec.subdomain = Some(spec.service_name.clone().unwrap_or_else(|| name.clone()));
        }
        match cluster.create(pod, now) {
            Ok(_) if !cluster.sim.bootstrapping => cluster.stats_mut().pods_recreated += 1,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "statefulset controller could not create a pod"),
        }
        changed = true;
    }
    // Scale down: ordinals at or above `desired` go.
    let extra: Vec<_> = cluster
        .pods
        .in_namespace(namespace)
        .filter(|p| is_controlled_by(&p.metadata, uid) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let pod_name = p.metadata.name.as_deref().unwrap_or_default();
            pod_name
                .strip_prefix(&format!("{name}-"))
                .and_then(|o| o.parse::<i32>().ok())
                .is_none_or(|o| o >= desired)
        })
        .cloned()
        .collect();
    for pod in extra {
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        cluster.terminate_pod(&pod, grace, now);
        changed = true;
    }
    changed
}
