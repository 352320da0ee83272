//! Turns a scenario into the initial cluster state: objects are created through the same
//! paths the API uses, then the controllers run once without delays so every pod starts out
//! scheduled, Running and (unless told otherwise) Ready.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, EmptyDirVolumeSource,
    Namespace, NamespaceStatus, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus,
    NodeSystemInfo, Pod, PodSpec, PodTemplateSpec, Taint, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    BarePodSpec, IntOrPercent, KubeletMode, NodeSpec as ScenarioNode, Phase, Role, Scenario,
};
use crate::cluster::{Cluster, ClusterConfig};
use crate::time::Now;

/// Annotation the kubelet puts on mirror pods of static pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The settings a cluster built from `scenario` keeps for its life.
pub(crate) fn cluster_config(scenario: &Scenario) -> ClusterConfig {
    ClusterConfig {
        kubernetes_version: scenario.cluster.kubernetes_version.clone(),
        timings: scenario.timings.clone(),
        scale: scenario.time_scale(),
        watch_history: scenario.cluster.watch_history,
        longhorn: scenario
            .longhorn
            .as_ref()
            .map(|l| crate::longhorn::LonghornConfig {
                node_selector: l.node_selector.clone(),
                rebuild_seconds: l.rebuild_seconds,
                replenishment_wait: l.replica_replenishment_wait_interval,
            }),
    }
}

pub fn build_cluster(scenario: &Scenario, now: &Now) -> Cluster {
    let mut cluster = Cluster::new(cluster_config(scenario), scenario.cluster.seed);
    cluster.sim.bootstrapping = true;
    // Validation guarantees names are unique and references resolve, so creation cannot fail;
    // a failure here is a bug worth a loud log rather than a half-built cluster silently.
    let create = |_: &mut Cluster, what: &str, result: Result<(), crate::error::ApiError>| {
        if let Err(error) = result {
            tracing::error!(%error, what, "scenario object could not be created");
        }
    };
    for ns in scenario.all_namespaces() {
        let namespace = Namespace {
            metadata: meta(
                &ns,
                None,
                BTreeMap::from([("kubernetes.io/metadata.name".into(), ns.clone())]),
            ),
            spec: None,
            status: Some(NamespaceStatus {
                phase: Some("Active".into()),
                conditions: None,
            }),
        };
        let r = cluster.create(namespace, now).map(drop);
        create(&mut cluster, "namespace", r);
    }
    for (index, spec) in scenario.nodes.iter().enumerate() {
        let node = node_object(spec, index, &scenario.cluster.kubernetes_version, now);
        let r = cluster.create(node, now).map(drop);
        create(&mut cluster, "node", r);
        if spec.kubelet == KubeletMode::External {
            cluster.sim.kubelet_heartbeat(&spec.name, now);
        }
    }
    let workloads = workloads(scenario);
    for deployment in workloads.deployments {
        let r = cluster.create(deployment, now).map(drop);
        create(&mut cluster, "deployment", r);
    }
    for sts in workloads.statefulsets {
        let r = cluster.create(sts, now).map(drop);
        create(&mut cluster, "statefulset", r);
    }
    for ds in workloads.daemonsets {
        let r = cluster.create(ds, now).map(drop);
        create(&mut cluster, "daemonset", r);
    }
    for p in &scenario.pods {
        let r = create_bare_pod(&mut cluster, p, now);
        create(&mut cluster, "pod", r);
    }
    for pdb in workloads.pdbs {
        let r = cluster.create(pdb, now).map(drop);
        create(&mut cluster, "poddisruptionbudget", r);
    }
    if let Some(longhorn) = &scenario.longhorn {
        let r = crate::longhorn::install(&mut cluster, scenario, longhorn, now);
        create(&mut cluster, "longhorn", r);
    }
    cluster.reconcile(now);
    cluster.sim.bootstrapping = false;
    cluster
}

/// The scenario's workload objects as a client would create them: what the
/// simulated cluster starts with, and what the real test tier applies
/// (see [`super::manifests`]).
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    pub deployments: Vec<Deployment>,
    pub statefulsets: Vec<StatefulSet>,
    pub daemonsets: Vec<DaemonSet>,
    pub pdbs: Vec<PodDisruptionBudget>,
}

pub fn workloads(scenario: &Scenario) -> Workloads {
    let mut all = Workloads::default();
    for w in &scenario.deployments {
        let labels = pod_labels(&w.name, &w.labels);
        all.deployments.push(Deployment {
            metadata: meta(&w.name, Some(&w.namespace), labels.clone()),
            spec: Some(DeploymentSpec {
                replicas: Some(w.replicas),
                selector: selector(&w.name),
                template: template(
                    &w.name,
                    labels,
                    &w.node_selector,
                    w.empty_dir,
                    w.grace_period,
                    &w.image,
                    vec![],
                ),
                ..Default::default()
            }),
            status: None,
        });
    }
    for w in &scenario.statefulsets {
        let labels = pod_labels(&w.name, &w.labels);
        all.statefulsets.push(StatefulSet {
            metadata: meta(&w.name, Some(&w.namespace), labels.clone()),
            spec: Some(StatefulSetSpec {
                replicas: Some(w.replicas),
                selector: selector(&w.name),
                service_name: Some(w.name.clone()),
                pod_management_policy: Some("Parallel".into()),
                template: template(
                    &w.name,
                    labels,
                    &w.node_selector,
                    w.empty_dir,
                    w.grace_period,
                    &w.image,
                    vec![],
                ),
                ..Default::default()
            }),
            status: None,
        });
    }
    for d in &scenario.daemonsets {
        let labels = pod_labels(&d.name, &d.labels);
        // DaemonSet pods run everywhere the selector allows, control-plane nodes included.
        let tolerate_all = vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        all.daemonsets.push(DaemonSet {
            metadata: meta(&d.name, Some(&d.namespace), labels.clone()),
            spec: Some(DaemonSetSpec {
                selector: selector(&d.name),
                template: template(
                    &d.name,
                    labels,
                    &d.node_selector,
                    false,
                    d.grace_period,
                    &d.image,
                    tolerate_all,
                ),
                ..Default::default()
            }),
            status: None,
        });
    }
    for p in &scenario.pdbs {
        let amount = |v: &Option<IntOrPercent>| {
            v.as_ref().map(|v| match v {
                IntOrPercent::Int(n) => IntOrString::Int(*n),
                IntOrPercent::Percent(s) => IntOrString::String(s.clone()),
            })
        };
        all.pdbs.push(PodDisruptionBudget {
            metadata: meta(&p.name, Some(&p.namespace), BTreeMap::new()),
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(p.selector.clone()),
                    match_expressions: None,
                }),
                min_available: amount(&p.min_available),
                max_unavailable: amount(&p.max_unavailable),
                unhealthy_pod_eviction_policy: p.unhealthy_pod_eviction_policy.clone(),
            }),
            status: None,
        });
    }
    all
}

/// A bare pod of the scenario as a client would create it (no status; the
/// simulated cluster's mirror pods also get their Node owner, which needs the
/// Node's UID).
pub fn bare_pod(spec: &BarePodSpec) -> Pod {
    let mut labels = spec.labels.clone();
    labels.insert("app".into(), spec.name.clone());
    let mut metadata = meta(&spec.name, Some(&spec.namespace), labels);
    let mut pod_spec = pod_spec(
        &spec.name,
        &BTreeMap::new(),
        spec.empty_dir,
        spec.grace_period,
        &spec.image,
        vec![],
    );
    pod_spec.node_name.clone_from(&spec.node);
    if spec.mirror {
        metadata.annotations = Some(BTreeMap::from([
            (
                MIRROR_ANNOTATION.to_string(),
                format!("{:x}", md5ish(&spec.name)),
            ),
            ("kubernetes.io/config.source".into(), "file".into()),
        ]));
    }
    Pod {
        metadata,
        spec: Some(pod_spec),
        status: None,
    }
}

pub(super) fn meta(
    name: &str,
    namespace: Option<&str>,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: (!labels.is_empty()).then_some(labels),
        ..Default::default()
    }
}

fn pod_labels(app: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.insert("app".into(), app.to_owned());
    labels
}

fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([("app".into(), app.to_owned())])),
        match_expressions: None,
    }
}

fn pod_spec(
    container: &str,
    node_selector: &BTreeMap<String, String>,
    empty_dir: bool,
    grace: i64,
    image: &str,
    tolerations: Vec<Toleration>,
) -> PodSpec {
    let (volumes, mounts) = if empty_dir {
        (
            Some(vec![Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            Some(vec![VolumeMount {
                name: "scratch".into(),
                mount_path: "/scratch".into(),
                ..Default::default()
            }]),
        )
    } else {
        (None, None)
    };
    PodSpec {
        containers: vec![Container {
            name: container.to_owned(),
            image: Some(image.to_owned()),
            volume_mounts: mounts,
            ..Default::default()
        }],
        volumes,
        node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
        termination_grace_period_seconds: Some(grace),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        ..Default::default()
    }
}

fn template(
    name: &str,
    labels: BTreeMap<String, String>,
    node_selector: &BTreeMap<String, String>,
    empty_dir: bool,
    grace: i64,
    image: &str,
    tolerations: Vec<Toleration>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(pod_spec(
            name,
            node_selector,
            empty_dir,
            grace,
            image,
            tolerations,
        )),
    }
}

/// The labels a node of the scenario carries: the kubelet's well-known ones,
/// K3s's role labels on servers, then the scenario's own.
pub fn node_labels(spec: &ScenarioNode) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), spec.name.clone()),
        ("kubernetes.io/os".into(), "linux".into()),
        ("kubernetes.io/arch".into(), "amd64".into()),
        ("beta.kubernetes.io/os".into(), "linux".into()),
        ("beta.kubernetes.io/arch".into(), "amd64".into()),
        ("node.kubernetes.io/instance-type".into(), "k3s".into()),
    ]);
    if spec.role == Role::Server {
        // What K3s puts on server nodes with embedded etcd.
        for role in ["control-plane", "etcd", "master"] {
            labels.insert(format!("node-role.kubernetes.io/{role}"), "true".into());
        }
    }
    labels.extend(spec.labels.clone());
    labels
}

/// The scenario's taints on a node.
pub fn node_taints(spec: &ScenarioNode) -> Option<Vec<Taint>> {
    (!spec.taints.is_empty()).then(|| {
        spec.taints
            .iter()
            .map(|t| Taint {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: t.effect.clone(),
                time_added: None,
            })
            .collect()
    })
}

fn node_object(spec: &ScenarioNode, index: usize, cluster_version: &str, now: &Now) -> Node {
    let labels = node_labels(spec);
    let version = spec
        .kubelet_version
        .clone()
        .unwrap_or_else(|| cluster_version.to_owned());
    let ip = format!("10.0.{}.{}", index / 250, index % 250 + 10);
    let (ready, reason, message) = if spec.ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        (
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
        )
    };
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.time()),
        last_transition_time: Some(now.time()),
    };
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("4".into())),
        ("memory".into(), Quantity("16335712Ki".into())),
        ("pods".into(), Quantity("110".into())),
        ("ephemeral-storage".into(), Quantity("101430960Ki".into())),
    ]);
    Node {
        metadata: meta(&spec.name, None, labels),
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.42.{index}.0/24")),
            pod_cidrs: Some(vec![format!("10.42.{index}.0/24")]),
            provider_id: Some(format!("k3s://{}", spec.name)),
            unschedulable: spec.unschedulable.then_some(true),
            taints: node_taints(spec),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip,
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: spec.name.clone(),
                },
            ]),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition("Ready", ready, reason, message),
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: String::new(),
                container_runtime_version: "containerd://2.1.4-k3s1".into(),
                kernel_version: "6.1.0-40-amd64".into(),
                kube_proxy_version: version.clone(),
                kubelet_version: version,
                machine_id: String::new(),
                operating_system: "linux".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                system_uuid: String::new(),
                swap: None,
            }),
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            ..Default::default()
        }),
    }
}

fn create_bare_pod(
    cluster: &mut Cluster,
    spec: &BarePodSpec,
    now: &Now,
) -> Result<(), crate::error::ApiError> {
    let mut pod = bare_pod(spec);
    if spec.mirror {
        let node_name = spec.node.clone().unwrap_or_default();
        let node_uid = cluster
            .nodes
            .get("", &node_name)
            .and_then(|n| n.metadata.uid.clone())
            .unwrap_or_default();
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name,
            uid: node_uid,
            controller: Some(true),
            block_owner_deletion: None,
        }]);
    }
    let created = cluster.create(pod, now)?;
    let uid = created.metadata.uid.clone().unwrap_or_default();
    match spec.phase {
        Phase::Running => cluster.sim.pod_timers(&uid).never_ready = !spec.ready,
        Phase::Succeeded | Phase::Failed => {
            let mut finished = (*created).clone();
            let exit_code = if spec.phase == Phase::Succeeded { 0 } else { 1 };
            let status = finished.status.get_or_insert_with(Default::default);
            status.phase = Some(spec.phase.as_str().into());
            status.container_statuses = Some(vec![ContainerStatus {
                name: spec.name.clone(),
                image: spec.image.clone(),
                image_id: String::new(),
                ready: false,
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code,
                        reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            cluster.write(finished);
        }
    }
    Ok(())
}

/// A stable stand-in for the config hash the kubelet writes into the mirror annotation.
fn md5ish(text: &str) -> u128 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x1000_0000_01b3)
    })
}
