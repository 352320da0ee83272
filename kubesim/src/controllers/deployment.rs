//! Deployments own one ReplicaSet (the simulator does not roll out new templates) whose
//! replica count follows the Deployment's.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::templates::{controller_ref, is_controlled_by};
use crate::cluster::Cluster;
use crate::time::Now;

/// The `pod-template-hash` of a Deployment: stable, derived from its UID.
pub fn template_hash(uid: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uid.bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(10)
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

pub(super) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let deployments: Vec<_> = cluster.deployments.iter().cloned().collect();
    for deployment in deployments {
        changed |= sync_one(cluster, &deployment, now);
    }
    changed
}

fn sync_one(cluster: &mut Cluster, deployment: &Deployment, now: &Now) -> bool {
    let meta = &deployment.metadata;
    let (Some(namespace), Some(uid), Some(spec)) = (&meta.namespace, &meta.uid, &deployment.spec)
    else {
        return false;
    };
    let replicas = spec.replicas.unwrap_or(1);
    let owned = cluster
        .replicasets
        .in_namespace(namespace)
        .find(|rs| is_controlled_by(&rs.metadata, uid))
        .cloned();
    match owned {
        Some(rs) => {
            if rs.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) {
                return false;
            }
            let mut rs = (*rs).clone();
            rs.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            cluster.write(rs);
            true
        }
        None => {
            let hash = template_hash(uid);
            let mut template = spec.template.clone();
            let template_meta = template.metadata.get_or_insert_with(Default::default);
            template_meta
                .labels
                .get_or_insert_with(Default::default)
                .insert("pod-template-hash".into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert("pod-template-hash".into(), hash.clone());
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!(
                        "{}-{hash}",
                        meta.name.as_deref().unwrap_or_default()
                    )),
                    namespace: Some(namespace.clone()),
                    labels: template_meta.labels.clone(),
                    owner_references: Some(vec![controller_ref("apps/v1", "Deployment", meta)]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    selector,
                    template: Some(template),
                    min_ready_seconds: None,
                }),
                status: None,
            };
            if let Err(error) = cluster.create(rs, now) {
                tracing::warn!(%error, "deployment controller could not create its ReplicaSet");
                return false;
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn template_hash_is_stable_and_ten_chars() {
        let a = super::template_hash("3f2a9c1e-1111-4222-8333-444455556666");
        assert_eq!(a.len(), 10);
        assert_eq!(
            a,
            super::template_hash("3f2a9c1e-1111-4222-8333-444455556666")
        );
    }
}
