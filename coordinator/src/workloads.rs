//! `k3sfleet check workloads`: what will make a rolling upgrade slow or
//! unsafe, per namespace, before one starts. The seed's own guardrails are
//! what make rolling upgrades possible at all: web tiers at 3 replicas behind
//! a PodDisruptionBudget with minAvailable 2, spread across nodes, and every
//! container with resource requests. Pure: it reads lists of objects.

use std::collections::{BTreeMap, BTreeSet};

use k3sfleet_proto::v1::WorkloadFinding;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{Selector, SelectorExt};

use crate::drain::pdb::PdbView;

/// The zone label nodes carry.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Deployment or StatefulSet, as the checks see it.
struct Workload<'a> {
    kind: &'static str,
    namespace: String,
    name: String,
    replicas: i32,
    selector: Option<Selector>,
    pods: Vec<&'a Pod>,
}

/// What the cluster holds, for the checks.
pub struct Objects<'a> {
    pub deployments: &'a [Deployment],
    pub statefulsets: &'a [StatefulSet],
    pub pdbs: &'a [PodDisruptionBudget],
    pub pods: &'a [Pod],
    pub nodes: &'a [Node],
}

fn finding(w: &Workload<'_>, check: &str, message: String, advice: &str) -> WorkloadFinding {
    WorkloadFinding {
        namespace: w.namespace.clone(),
        workload: format!("{}/{}", w.kind, w.name),
        check: check.to_string(),
        message,
        advice: advice.to_string(),
    }
}

fn selector_of(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Option<Selector> {
    selector.cloned().and_then(|s| Selector::try_from(s).ok())
}

/// Every finding, sorted by namespace, workload and check.
pub fn check(objects: &Objects<'_>) -> Vec<WorkloadFinding> {
    let workloads = workloads(objects);
    let pdbs = PdbView::all(objects.pdbs);
    let zone_of: BTreeMap<&str, &str> = objects
        .nodes
        .iter()
        .filter_map(|n| {
            let zone = n.metadata.labels.as_ref()?.get(ZONE_LABEL)?;
            Some((n.metadata.name.as_deref()?, zone.as_str()))
        })
        .collect();
    let zones: BTreeSet<&str> = zone_of.values().copied().collect();
    let mut findings = Vec::new();
    for w in &workloads {
        let covering: Vec<&PdbView> = pdbs
            .iter()
            .filter(|pdb| w.pods.iter().any(|pod| pdb.covers(pod)))
            .collect();
        if w.replicas >= 2 && covering.is_empty() {
            findings.push(finding(
                w,
                "no-pdb",
                format!("{} replicas and no PodDisruptionBudget: a drain may take them all at once", w.replicas),
                "add a PodDisruptionBudget (the seed: minAvailable 2 for 3 replicas, or maxUnavailable 1)",
            ));
        }
        for pdb in &covering {
            if let Some(why) = pdb.never_allows() {
                let check = if w.replicas <= 1 {
                    "single-replica-pdb"
                } else {
                    "pdb-no-room"
                };
                findings.push(finding(
                    w,
                    check,
                    why,
                    if w.replicas <= 1 {
                        "run 2 or more replicas, or drop the budget (a single instance cannot be kept up through a drain anyway)"
                    } else {
                        "leave room: minAvailable below the replica count, or maxUnavailable 1"
                    },
                ));
            }
        }
        if w.replicas >= 2 && w.pods.len() >= 2 {
            let nodes: BTreeSet<&str> = w
                .pods
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
                .collect();
            if nodes.len() == 1 {
                findings.push(finding(
                    w,
                    "one-node",
                    format!(
                        "all {} pods run on {}: one drain takes every one of them",
                        w.pods.len(),
                        nodes.iter().next().expect("one node")
                    ),
                    "spread them: topologySpreadConstraints with topologyKey kubernetes.io/hostname, maxSkew 1",
                ));
            } else if zones.len() >= 2 {
                let used: BTreeSet<&str> = nodes
                    .iter()
                    .filter_map(|n| zone_of.get(n).copied())
                    .collect();
                if used.len() == 1 {
                    findings.push(finding(
                        w,
                        "one-zone",
                        format!(
                            "all {} pods run in zone {} of the cluster's {}",
                            w.pods.len(),
                            used.iter().next().expect("one zone"),
                            zones.len()
                        ),
                        "spread them: topologySpreadConstraints with topologyKey topology.kubernetes.io/zone, maxSkew 1",
                    ));
                }
            }
        }
        let unbounded: BTreeSet<String> = w
            .pods
            .iter()
            .flat_map(|p| p.spec.iter().flat_map(|s| &s.containers))
            .filter(|c| {
                let resources = c.resources.as_ref();
                let requests = resources
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|r| !r.is_empty());
                let limits = resources
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|r| !r.is_empty());
                !(requests && limits)
            })
            .map(|c| c.name.clone())
            .collect();
        if !unbounded.is_empty() {
            findings.push(finding(
                w,
                "no-resources",
                format!(
                    "containers without resource requests and limits: {}",
                    unbounded.into_iter().collect::<Vec<_>>().join(", ")
                ),
                "set requests (and limits): evicted pods must fit on the nodes they move to",
            ));
        }
    }
    findings.sort_by(|a, b| {
        (&a.namespace, &a.workload, &a.check).cmp(&(&b.namespace, &b.workload, &b.check))
    });
    findings
}

fn workloads<'a>(objects: &Objects<'a>) -> Vec<Workload<'a>> {
    let mut all: Vec<Workload<'a>> = Vec::new();
    for d in objects.deployments {
        all.push(Workload {
            kind: "Deployment",
            namespace: d.metadata.namespace.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            selector: selector_of(d.spec.as_ref().map(|s| &s.selector)),
            pods: Vec::new(),
        });
    }
    for s in objects.statefulsets {
        all.push(Workload {
            kind: "StatefulSet",
            namespace: s.metadata.namespace.clone().unwrap_or_default(),
            name: s.metadata.name.clone().unwrap_or_default(),
            replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            selector: selector_of(s.spec.as_ref().map(|s| &s.selector)),
            pods: Vec::new(),
        });
    }
    for w in &mut all {
        let Some(selector) = &w.selector else {
            continue;
        };
        w.pods = objects
            .pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(w.namespace.as_str()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default())))
            .collect();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    fn deployment(name: &str, replicas: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels(name)),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(app: &str, i: usize, node: &str, bounded: bool) -> Pod {
        let quantity = || [("cpu".to_string(), Quantity("100m".into()))].into();
        Pod {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(format!("{app}-{i}")),
                labels: Some(labels(app)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "app".into(),
                    resources: bounded.then(|| ResourceRequirements {
                        requests: Some(quantity()),
                        limits: Some(quantity()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pdb(app: &str, desired: i32, expected: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(app.into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(labels(app)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                desired_healthy: desired,
                expected_pods: expected,
                current_healthy: expected,
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    fn node(name: &str, zone: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(ZONE_LABEL.to_string(), zone.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn checks(findings: &[WorkloadFinding], workload: &str) -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.workload == workload)
            .map(|f| f.check.clone())
            .collect()
    }

    #[test]
    fn the_seeds_guardrails_pass_and_each_way_of_breaking_them_is_named() {
        let deployments = [
            deployment("web", 3),
            deployment("api", 2),
            deployment("db", 1),
            deployment("cache", 2),
            deployment("batch", 2),
        ];
        let pods = [
            pod("web", 0, "w1", true),
            pod("web", 1, "w2", true),
            pod("web", 2, "w3", true),
            pod("api", 0, "w1", true),
            pod("api", 1, "w2", true),
            pod("db", 0, "w1", true),
            pod("cache", 0, "w3", true),
            pod("cache", 1, "w3", true),
            pod("batch", 0, "w1", false),
            pod("batch", 1, "w3", true),
        ];
        let pdbs = [
            pdb("web", 2, 3),
            pdb("db", 1, 1),
            pdb("cache", 1, 2),
            pdb("batch", 1, 2),
        ];
        let nodes = [node("w1", "a"), node("w2", "a"), node("w3", "b")];
        let findings = check(&Objects {
            deployments: &deployments,
            statefulsets: &[],
            pdbs: &pdbs,
            pods: &pods,
            nodes: &nodes,
        });
        assert!(
            checks(&findings, "Deployment/web").is_empty(),
            "{findings:#?}"
        );
        assert_eq!(checks(&findings, "Deployment/api"), ["no-pdb", "one-zone"]);
        assert_eq!(checks(&findings, "Deployment/db"), ["single-replica-pdb"]);
        assert_eq!(checks(&findings, "Deployment/cache"), ["one-node"]);
        assert_eq!(checks(&findings, "Deployment/batch"), ["no-resources"]);
        let one_node = findings.iter().find(|f| f.check == "one-node").unwrap();
        assert!(
            one_node.message.contains("w3") && one_node.advice.contains("kubernetes.io/hostname")
        );
    }
}
