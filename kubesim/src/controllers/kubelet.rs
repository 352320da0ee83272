//! The simulated kubelets' side of the pod lifecycle: a pod bound to a node starts after the
//! ready delay (Running, Ready unless it is a crash-looping one); a terminating pod disappears
//! once its containers have stopped. Pods bound to a node that no longer exists are removed,
//! as the pod garbage collector does.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodIP,
};

use crate::cluster::Cluster;
use crate::cluster::pods::{is_terminating, node_name, phase};
use crate::time::Now;

pub(super) fn sync_pods(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let pods: Vec<_> = cluster.pods.iter().cloned().collect();
    let ready_delay = cluster
        .config
        .scale
        .wall(cluster.config.timings.ready_delay);
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let timers = cluster.sim.pod_timers(&uid).clone();
        if let Some(remove_at) = timers.remove_at {
            if now.instant >= remove_at {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                cluster.remove::<Pod>(namespace, name);
                cluster.sim.forget_pod(&uid);
                changed = true;
            } else {
                cluster.sim.wake_at(remove_at);
            }
            continue;
        }
        let Some(node) = node_name(&pod).map(str::to_owned) else {
            continue;
        };
        if cluster.nodes.get("", &node).is_none() {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            cluster.remove::<Pod>(namespace, name);
            cluster.sim.forget_pod(&uid);
            changed = true;
            continue;
        }
        if is_terminating(&pod) || phase(&pod) != "Pending" {
            continue;
        }
        let ready_at = match timers.ready_at {
            Some(at) => at,
            None => {
                let at = if cluster.sim.bootstrapping {
                    now.instant
                } else {
                    now.instant + ready_delay
                };
                cluster.sim.pod_timers(&uid).ready_at = Some(at);
                at
            }
        };
        if now.instant < ready_at {
            cluster.sim.wake_at(ready_at);
            continue;
        }
        let host_ip = cluster.nodes.get("", &node).and_then(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        });
        let started = start_pod(
            &pod,
            host_ip,
            cluster.sim.next_pod_ip(),
            !timers.never_ready,
            now,
        );
        cluster.write(started);
        changed = true;
    }
    changed
}

/// The pod as its kubelet reports it once its containers run.
pub fn start_pod(
    pod: &Pod,
    host_ip: Option<String>,
    pod_ip: String,
    ready: bool,
    now: &Now,
) -> Pod {
    let mut pod = pod.clone();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let status = pod.status.get_or_insert_with(Default::default);
    status.phase = Some("Running".into());
    status.host_ip.clone_from(&host_ip);
    status.host_ips = host_ip.map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]);
    status.pod_ip = Some(pod_ip.clone());
    status.pod_ips = Some(vec![PodIP { ip: pod_ip }]);
    status.start_time = Some(now.time());
    let flag = |b: bool| if b { "True" } else { "False" }.to_string();
    let condition = |type_: &str, ok: bool| PodCondition {
        type_: type_.into(),
        status: flag(ok),
        reason: (!ok).then(|| "ContainersNotReady".into()),
        last_transition_time: Some(now.time()),
        ..Default::default()
    };
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", true));
    status.conditions = Some(vec![
        condition("PodReadyToStartContainers", true),
        condition("Initialized", true),
        condition("Ready", ready),
        condition("ContainersReady", ready),
        scheduled,
    ]);
    status.container_statuses = Some(
        containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: format!(
                    "{}@sha256:{}",
                    c.image.as_deref().unwrap_or_default(),
                    "0".repeat(64)
                ),
                container_id: Some(format!("containerd://{}", "a".repeat(64))),
                ready,
                started: Some(true),
                restart_count: if ready { 0 } else { 5 },
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now.time()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    );
    pod
}
