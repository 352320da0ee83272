//! A scenario as Kubernetes manifests, for a real cluster: the same objects
//! the simulated cluster starts with ([`super::workloads`], [`super::bare_pod`]),
//! in the order `kubectl apply` needs them, plus the annotations with which
//! KWOK (the real tier's kubelets, testbed/kwok/stages.yaml) plays the
//! scenario's timings and pod states:
//!
//! - `pod-ready.stage.kwok.x-k8s.io/delay`: the scenario's `ready_delay`;
//! - `pod-delete.stage.kwok.x-k8s.io/delay`: its `termination` (capped by
//!   the pod's grace period, as kubesim caps it);
//! - `k3sfleet.io/phase`: a bare pod that has finished (Succeeded, Failed);
//! - `k3sfleet.io/never-ready`: a bare pod that never turns Ready.
//!
//! Cluster seconds are divided by the scenario's time scale: a real cluster
//! runs in wall time. The scenario's `replacement_delay` has no counterpart
//! (the real controllers replace pods at once).
//!
//! Nodes are included with their labels, taints and cordon, as an operator
//! (or K3s's server, for the role labels) would have them; their status is
//! their kubelet's to report.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, NodeSpec, PodTemplateSpec};
use serde_json::Value;

use super::build::{meta, node_labels, node_taints};
use super::{Phase, Scenario};

/// Annotation KWOK's pod-ready stage reads its delay from.
pub const READY_DELAY: &str = "pod-ready.stage.kwok.x-k8s.io/delay";
/// Annotation KWOK's pod-delete stage reads its delay from.
pub const DELETE_DELAY: &str = "pod-delete.stage.kwok.x-k8s.io/delay";
/// A bare pod KWOK finishes in this phase.
pub const PHASE: &str = "k3sfleet.io/phase";
/// A pod KWOK never makes Ready.
pub const NEVER_READY: &str = "k3sfleet.io/never-ready";

/// The manifests of a scenario, grouped into files by kind, in apply order.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// (file stem, objects): "nodes", "namespaces", "deployments", ...
    pub files: Vec<(&'static str, Vec<Value>)>,
}

impl Manifests {
    /// Every object, in apply order.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.files.iter().flat_map(|(_, objects)| objects.iter())
    }
}

/// Namespaces every cluster has.
const BUILT_IN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn render(scenario: &Scenario) -> Manifests {
    let scale = scenario.cluster.time_scale.max(f64::MIN_POSITIVE);
    let wall = |cluster_seconds: f64| format!("{}ms", (cluster_seconds / scale * 1000.0).round());
    let ready_delay = wall(scenario.timings.ready_delay);
    let delete_delay = |grace: i64| wall(scenario.timings.termination.min(grace as f64));
    let annotate = |template: &mut PodTemplateSpec| {
        let grace = template
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let metadata = template.metadata.get_or_insert_with(Default::default);
        let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(READY_DELAY.into(), ready_delay.clone());
        annotations.insert(DELETE_DELAY.into(), delete_delay(grace));
    };

    let nodes = scenario
        .nodes
        .iter()
        .map(|spec| {
            to_value(&Node {
                metadata: meta(&spec.name, None, node_labels(spec)),
                spec: Some(NodeSpec {
                    provider_id: Some(format!("k3s://{}", spec.name)),
                    unschedulable: spec.unschedulable.then_some(true),
                    taints: node_taints(spec),
                    ..Default::default()
                }),
                status: None,
            })
        })
        .collect();
    let namespaces = scenario
        .all_namespaces()
        .iter()
        .filter(|ns| !BUILT_IN_NAMESPACES.contains(&ns.as_str()))
        .map(|ns| {
            to_value(&Namespace {
                metadata: meta(ns, None, BTreeMap::new()),
                ..Default::default()
            })
        })
        .collect();
    let mut workloads = super::workloads(scenario);
    for d in &mut workloads.deployments {
        if let Some(spec) = d.spec.as_mut() {
            annotate(&mut spec.template);
        }
    }
    for s in &mut workloads.statefulsets {
        if let Some(spec) = s.spec.as_mut() {
            annotate(&mut spec.template);
        }
    }
    for d in &mut workloads.daemonsets {
        if let Some(spec) = d.spec.as_mut() {
            annotate(&mut spec.template);
        }
    }
    let pods = scenario
        .pods
        .iter()
        .map(|spec| {
            let mut pod = super::bare_pod(spec);
            let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
            annotations.insert(READY_DELAY.into(), ready_delay.clone());
            annotations.insert(DELETE_DELAY.into(), delete_delay(spec.grace_period));
            if spec.phase != Phase::Running {
                annotations.insert(PHASE.into(), spec.phase.as_str().into());
            }
            if !spec.ready {
                annotations.insert(NEVER_READY.into(), "true".into());
            }
            to_value(&pod)
        })
        .collect();
    Manifests {
        files: vec![
            ("nodes", nodes),
            ("namespaces", namespaces),
            (
                "deployments",
                workloads.deployments.iter().map(to_value).collect(),
            ),
            (
                "statefulsets",
                workloads.statefulsets.iter().map(to_value).collect(),
            ),
            (
                "daemonsets",
                workloads.daemonsets.iter().map(to_value).collect(),
            ),
            ("pods", pods),
            (
                "poddisruptionbudgets",
                workloads.pdbs.iter().map(to_value).collect(),
            ),
        ],
    }
}

fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("Kubernetes objects serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"
        [cluster]
        time_scale = 10.0
        [timings]
        ready_delay = 20
        termination = 3
        [[nodes]]
        name = "server-1"
        role = "server"
        [[nodes]]
        name = "worker-1"
        labels = { pool = "a" }
        [[deployments]]
        namespace = "shop"
        name = "web"
        replicas = 2
        grace_period = 1
        [[pods]]
        namespace = "billing"
        name = "migrate"
        node = "worker-1"
        phase = "Succeeded"
        [[pdbs]]
        namespace = "shop"
        name = "web"
        selector = { app = "web" }
        min_available = 1
    "#;

    #[test]
    fn a_scenario_becomes_manifests_with_its_timings_in_wall_time() {
        let scenario = Scenario::from_toml(SCENARIO, "test").unwrap();
        let manifests = render(&scenario);
        let kinds: Vec<&str> = manifests
            .objects()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "Node",
                "Node",
                "Namespace",
                "Namespace",
                "Deployment",
                "Pod",
                "PodDisruptionBudget"
            ]
        );
        let server = &manifests.files[0].1[0];
        assert_eq!(
            server["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
            "true"
        );
        assert!(server.get("status").is_none());
        let web = &manifests.files[2].1[0];
        let annotations = &web["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations[READY_DELAY], "2000ms");
        // Termination is capped by the 1 s grace period: 0.1 s of wall time.
        assert_eq!(annotations[DELETE_DELAY], "100ms");
        let migrate = &manifests.files[5].1[0];
        assert_eq!(migrate["metadata"]["annotations"][PHASE], "Succeeded");
        assert_eq!(migrate["spec"]["nodeName"], "worker-1");
        assert_eq!(manifests.files[6].1[0]["spec"]["minAvailable"], 1);
    }
}
