//! Binds Pending pods to nodes: Ready, not cordoned, matching the pod's nodeSelector, with all
//! NoSchedule/NoExecute taints tolerated; the least loaded such node wins (ties by name).
//! No fit leaves the pod Pending with a PodScheduled=False/Unschedulable condition.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodSpec, Toleration};

use crate::cluster::Cluster;
use crate::cluster::pods::{is_terminating, node_name, phase};
use crate::time::Now;

pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn node_is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

pub fn node_selector_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    spec.node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn tolerates(toleration: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == effect);
    let key_ok = toleration
        .key
        .as_deref()
        .is_none_or(|k| k.is_empty() || k == key);
    let value_ok = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or("") == value,
    };
    // An empty key with operator Exists tolerates everything.
    effect_ok && key_ok && value_ok
}

/// All NoSchedule and NoExecute taints of `node` are tolerated by the pod.
pub fn taints_tolerated(spec: &PodSpec, node: &Node) -> bool {
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .all(|taint| {
            taint.effect == "PreferNoSchedule"
                || tolerations.iter().any(|t| {
                    tolerates(
                        t,
                        &taint.key,
                        taint.value.as_deref().unwrap_or(""),
                        &taint.effect,
                    )
                })
        })
}

/// The node the scheduler would bind `pod` to, given pods-per-node counts.
pub fn pick_node<'a>(
    pod: &Pod,
    nodes: impl Iterator<Item = &'a Node>,
    load: &HashMap<String, usize>,
) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    nodes
        .filter(|n| node_is_ready(n) && !node_is_unschedulable(n))
        .filter(|n| node_selector_matches(spec, n) && taints_tolerated(spec, n))
        .filter_map(|n| n.metadata.name.clone())
        .min_by_key(|name| (load.get(name).copied().unwrap_or(0), name.clone()))
}

fn creating(
    container: &k8s_openapi::api::core::v1::Container,
) -> k8s_openapi::api::core::v1::ContainerStatus {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus};
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn schedule(cluster: &mut Cluster, now: &Now) -> bool {
    let pending: Vec<_> = cluster
        .pods
        .iter()
        .filter(|p| node_name(p).is_none() && !is_terminating(p) && phase(p) == "Pending")
        .cloned()
        .collect();
    if pending.is_empty() {
        return false;
    }
    let mut load: HashMap<String, usize> = HashMap::new();
    for pod in cluster.pods.iter().filter(|p| !is_terminating(p)) {
        if let Some(node) = node_name(pod) {
            *load.entry(node.to_owned()).or_default() += 1;
        }
    }
    let node_count = cluster.nodes.len();
    let mut changed = false;
    for pod in pending {
        let mut updated = (*pod).clone();
        let condition = match pick_node(&pod, cluster.nodes.iter().map(|n| &**n), &load) {
            Some(node) => {
                *load.entry(node.clone()).or_default() += 1;
                updated.spec.get_or_insert_with(Default::default).node_name = Some(node);
                // What the kubelet reports while it pulls images and starts containers.
                let containers = updated
                    .spec
                    .as_ref()
                    .map(|s| s.containers.clone())
                    .unwrap_or_default();
                updated
                    .status
                    .get_or_insert_with(Default::default)
                    .container_statuses = Some(containers.iter().map(creating).collect());
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(now.time()),
                    ..Default::default()
                }
            }
            None => {
                let already = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    });
                if already {
                    continue;
                }
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(format!(
                        "0/{node_count} nodes are available: no node is Ready, schedulable and matching the pod's node selector and tolerations."
                    )),
                    last_transition_time: Some(now.time()),
                    ..Default::default()
                }
            }
        };
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "PodScheduled");
        conditions.push(condition);
        cluster.write(updated);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(name: &str, ready: bool, cordoned: bool, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(cordoned),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "Unknown" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(selector: &[(&str, &str)]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn skips_cordoned_unready_and_unmatched_nodes() {
        let nodes = [
            node("a", true, true, &[("disk", "ssd")]),
            node("b", false, false, &[("disk", "ssd")]),
            node("c", true, false, &[("disk", "hdd")]),
            node("d", true, false, &[("disk", "ssd")]),
        ];
        let load = HashMap::new();
        assert_eq!(
            pick_node(&pod(&[("disk", "ssd")]), nodes.iter(), &load).as_deref(),
            Some("d")
        );
        assert_eq!(
            pick_node(&pod(&[("disk", "nvme")]), nodes.iter(), &load),
            None
        );
    }

    #[test]
    fn prefers_least_loaded_then_name() {
        let nodes = [node("a", true, false, &[]), node("b", true, false, &[])];
        let mut load = HashMap::new();
        assert_eq!(
            pick_node(&pod(&[]), nodes.iter(), &load).as_deref(),
            Some("a")
        );
        load.insert("a".to_string(), 3);
        assert_eq!(
            pick_node(&pod(&[]), nodes.iter(), &load).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn taints_need_tolerations() {
        let mut tainted = node("a", true, false, &[]);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let load = HashMap::new();
        assert_eq!(pick_node(&pod(&[]), [&tainted].into_iter(), &load), None);
        let mut tolerant = pod(&[]);
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node-role.kubernetes.io/control-plane".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(
            pick_node(&tolerant, [&tainted].into_iter(), &load).as_deref(),
            Some("a")
        );
    }
}
