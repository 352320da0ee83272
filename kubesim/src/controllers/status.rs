//! Status of ReplicaSets, Deployments, StatefulSets and DaemonSets, derived from their pods
//! (what `kubectl get deploy/sts/ds` shows).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    DaemonSetStatus, DeploymentStatus, ReplicaSetStatus, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::Pod;

use super::daemonset::wants_node;
use super::templates::is_controlled_by;
use crate::cluster::Cluster;
use crate::cluster::pods::{is_ready, is_terminating, phase};

struct Counts {
    active: i32,
    ready: i32,
}

fn count(pods: &[Arc<Pod>], namespace: &str, owner_uid: &str) -> Counts {
    let owned: Vec<_> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| is_controlled_by(&p.metadata, owner_uid))
        .filter(|p| !is_terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    Counts {
        active: owned.len() as i32,
        ready: owned.iter().filter(|p| is_ready(p)).count() as i32,
    }
}

pub(super) fn sync(cluster: &mut Cluster) -> bool {
    let pods: Vec<_> = cluster.pods.iter().cloned().collect();
    let mut changed = false;

    for rs in cluster.replicasets.iter().cloned().collect::<Vec<_>>() {
        let (ns, uid) = (
            rs.metadata.namespace.clone().unwrap_or_default(),
            rs.metadata.uid.clone().unwrap_or_default(),
        );
        let c = count(&pods, &ns, &uid);
        let status = ReplicaSetStatus {
            replicas: c.active,
            fully_labeled_replicas: Some(c.active),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.ready),
            observed_generation: rs.metadata.generation,
            ..Default::default()
        };
        if rs.status.as_ref() != Some(&status) {
            let mut rs = (*rs).clone();
            rs.status = Some(status);
            cluster.write(rs);
            changed = true;
        }
    }

    for d in cluster.deployments.iter().cloned().collect::<Vec<_>>() {
        let (ns, uid) = (
            d.metadata.namespace.clone().unwrap_or_default(),
            d.metadata.uid.clone().unwrap_or_default(),
        );
        let (mut active, mut ready) = (0, 0);
        for rs in cluster
            .replicasets
            .in_namespace(&ns)
            .filter(|rs| is_controlled_by(&rs.metadata, &uid))
        {
            let c = count(&pods, &ns, rs.metadata.uid.as_deref().unwrap_or_default());
            active += c.active;
            ready += c.ready;
        }
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = DeploymentStatus {
            replicas: Some(active),
            updated_replicas: Some(active),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            unavailable_replicas: Some((desired - ready).max(0)),
            observed_generation: d.metadata.generation,
            ..Default::default()
        };
        if d.status.as_ref() != Some(&status) {
            let mut d = (*d).clone();
            d.status = Some(status);
            cluster.write(d);
            changed = true;
        }
    }

    for sts in cluster.statefulsets.iter().cloned().collect::<Vec<_>>() {
        let (ns, uid) = (
            sts.metadata.namespace.clone().unwrap_or_default(),
            sts.metadata.uid.clone().unwrap_or_default(),
        );
        let c = count(&pods, &ns, &uid);
        let status = StatefulSetStatus {
            replicas: c.active,
            current_replicas: Some(c.active),
            updated_replicas: Some(c.active),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.ready),
            observed_generation: sts.metadata.generation,
            ..Default::default()
        };
        if sts.status.as_ref() != Some(&status) {
            let mut sts = (*sts).clone();
            sts.status = Some(status);
            cluster.write(sts);
            changed = true;
        }
    }

    for ds in cluster.daemonsets.iter().cloned().collect::<Vec<_>>() {
        let (ns, uid) = (
            ds.metadata.namespace.clone().unwrap_or_default(),
            ds.metadata.uid.clone().unwrap_or_default(),
        );
        let desired = cluster.nodes.iter().filter(|n| wants_node(&ds, n)).count() as i32;
        let c = count(&pods, &ns, &uid);
        let status = DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: c.active,
            updated_number_scheduled: Some(c.active),
            number_ready: c.ready,
            number_available: Some(c.ready),
            number_unavailable: Some((desired - c.ready).max(0)),
            number_misscheduled: 0,
            observed_generation: ds.metadata.generation,
            ..Default::default()
        };
        if ds.status.as_ref() != Some(&status) {
            let mut ds = (*ds).clone();
            ds.status = Some(status);
            cluster.write(ds);
            changed = true;
        }
    }
    changed
}
