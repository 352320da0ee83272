//! The processes a K3s host runs on the real tier, as command lines: on a
//! server an etcd member, kube-apiserver on it, kube-controller-manager and
//! kube-scheduler with leader election; on every host KWOK playing the
//! kubelet of this one node. The flags are those kubeadm, kwokctl and
//! envtest use, with K3s's paths and etcd timings.

use std::path::PathBuf;

use super::{K3sLayout, RealHostConfig, ServerConfig};

/// One child process of the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Leader election fast enough that a restarted or cut-off server hands its
/// controllers over within seconds, not the default 15 s + 10 s.
const LEADER_ELECTION: [&str; 4] = [
    "--leader-elect=true",
    "--leader-elect-lease-duration=8s",
    "--leader-elect-renew-deadline=6s",
    "--leader-elect-retry-period=2s",
];

/// The components of this host, in start order (stopped in reverse).
pub fn components(config: &RealHostConfig, layout: &K3sLayout) -> Vec<Component> {
    let mut all = Vec::new();
    if let Some(server) = &config.server {
        all.push(etcd(config, server, layout));
        all.push(kube_apiserver(config, server, layout));
        all.push(kube_controller_manager(config, server, layout));
        all.push(kube_scheduler(config, layout));
    }
    all.push(kwok(config, layout));
    all
}

fn path(path: PathBuf) -> String {
    path.display().to_string()
}

fn etcd(config: &RealHostConfig, server: &ServerConfig, layout: &K3sLayout) -> Component {
    let tls = layout.etcd_tls();
    let ip = config.address;
    Component {
        name: "etcd",
        program: config.binary("etcd"),
        args: vec![
            format!("--name={}", config.node),
            format!("--data-dir={}", path(layout.etcd_data())),
            format!("--listen-client-urls=https://127.0.0.1:2379,https://{ip}:2379"),
            format!("--advertise-client-urls=https://{ip}:2379"),
            format!("--listen-peer-urls=https://{ip}:2380"),
            format!("--initial-advertise-peer-urls=https://{ip}:2380"),
            format!("--initial-cluster={}", server.etcd_initial_cluster),
            format!("--initial-cluster-token={}", server.etcd_cluster_token),
            "--initial-cluster-state=new".into(),
            "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            // K3s's embedded etcd timings: a loaded 2-core machine misses
            // etcd's 100 ms heartbeats, and elections would flap.
            "--heartbeat-interval=500".into(),
            "--election-timeout=5000".into(),
            // Every member shares one disk with everything else here; the
            // protocol clients see is unchanged.
            "--unsafe-no-fsync".into(),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", path(tls.join("server-ca.crt"))),
            format!("--cert-file={}", path(tls.join("server-client.crt"))),
            format!("--key-file={}", path(tls.join("server-client.key"))),
            "--peer-client-cert-auth".into(),
            format!("--peer-trusted-ca-file={}", path(tls.join("peer-ca.crt"))),
            format!(
                "--peer-cert-file={}",
                path(tls.join("peer-server-client.crt"))
            ),
            format!(
                "--peer-key-file={}",
                path(tls.join("peer-server-client.key"))
            ),
            "--log-level=warn".into(),
        ],
    }
}

fn kube_apiserver(config: &RealHostConfig, server: &ServerConfig, layout: &K3sLayout) -> Component {
    let tls = layout.server_tls();
    let etcd = layout.etcd_tls();
    Component {
        name: "kube-apiserver",
        program: config.binary("kube-apiserver"),
        args: vec![
            // K3s's API server talks to the local member only.
            "--etcd-servers=https://127.0.0.1:2379".into(),
            format!("--etcd-cafile={}", path(etcd.join("server-ca.crt"))),
            format!("--etcd-certfile={}", path(etcd.join("client.crt"))),
            format!("--etcd-keyfile={}", path(etcd.join("client.key"))),
            "--bind-address=0.0.0.0".into(),
            "--secure-port=6443".into(),
            format!("--advertise-address={}", config.address),
            format!("--cert-dir={}", path(tls.join("temporary-certs"))),
            format!(
                "--tls-cert-file={}",
                path(tls.join("serving-kube-apiserver.crt"))
            ),
            format!(
                "--tls-private-key-file={}",
                path(tls.join("serving-kube-apiserver.key"))
            ),
            format!("--client-ca-file={}", path(tls.join("client-ca.crt"))),
            format!(
                "--service-account-key-file={}",
                path(tls.join("service.pub"))
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(tls.join("service.key"))
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--api-audiences=https://kubernetes.default.svc.cluster.local,k3s".into(),
            format!("--service-cluster-ip-range={}", server.service_cidr),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            // Three API servers share the kubernetes Service's endpoints.
            "--endpoint-reconciler-type=lease".into(),
            format!("--audit-policy-file={}", path(layout.audit_policy())),
            format!("--audit-log-path={}", path(layout.audit_log())),
            // One file per server, never rotated while a test reads it.
            "--audit-log-maxsize=0".into(),
            "--audit-log-format=json".into(),
            "--profiling=false".into(),
        ],
    }
}

fn kube_controller_manager(
    config: &RealHostConfig,
    server: &ServerConfig,
    layout: &K3sLayout,
) -> Component {
    let tls = layout.server_tls();
    let grace = server.node_monitor_grace_period.as_secs().max(1);
    let mut args = vec![
        format!(
            "--kubeconfig={}",
            path(layout.server_cred().join("controller.kubeconfig"))
        ),
        // Nothing scrapes it; one port less per server.
        "--secure-port=0".into(),
        // Each controller acts as its own service account, as kubeadm sets it
        // up: the audit log names who did what.
        "--use-service-account-credentials=true".into(),
        format!(
            "--service-account-private-key-file={}",
            path(tls.join("service.key"))
        ),
        format!("--root-ca-file={}", path(tls.join("server-ca.crt"))),
        format!("--node-monitor-grace-period={grace}s"),
        "--node-monitor-period=2s".into(),
        // A fleet's worth of pods moving at once: the default 20 QPS would
        // make the ReplicaSet controller the bottleneck of every drain.
        "--kube-api-qps=100".into(),
        "--kube-api-burst=200".into(),
        "--profiling=false".into(),
    ];
    args.extend(LEADER_ELECTION.map(String::from));
    Component {
        name: "kube-controller-manager",
        program: config.binary("kube-controller-manager"),
        args,
    }
}

fn kube_scheduler(config: &RealHostConfig, layout: &K3sLayout) -> Component {
    let mut args = vec![
        format!(
            "--kubeconfig={}",
            path(layout.server_cred().join("scheduler.kubeconfig"))
        ),
        "--secure-port=0".into(),
        "--profiling=false".into(),
    ];
    args.extend(LEADER_ELECTION.map(String::from));
    Component {
        name: "kube-scheduler",
        program: config.binary("kube-scheduler"),
        args,
    }
}

fn kwok(config: &RealHostConfig, layout: &K3sLayout) -> Component {
    Component {
        name: "kwok",
        program: config.binary("kwok"),
        args: vec![
            format!("--kubeconfig={}", path(layout.kubelet_kubeconfig())),
            format!("--config={}", config.kwok_stages.display()),
            "--manage-all-nodes=false".into(),
            format!("--manage-single-node={}", config.node),
            format!("--node-name={}", config.node),
            format!("--node-ip={}", config.address),
            format!("--cidr={}", config.pod_cidr),
            format!(
                "--node-lease-duration-seconds={}",
                config.node_lease_seconds
            ),
            format!("-v={}", config.kwok_log_level),
        ],
    }
}
