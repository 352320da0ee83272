//! The real test tier: the lab's cluster is upstream Kubernetes instead of
//! kubesim. Three server hosts run a three-member etcd cluster (client and
//! peer TLS with client-certificate auth, K3s's paths), kube-apiserver on the
//! local member with audit logging, kube-controller-manager and
//! kube-scheduler with leader election; every host runs KWOK as its node's
//! kubelet. All of it is started and stopped by each host's stand-in K3s
//! (`k3sfleet-standin-k3s-real`, see `k3sfleet_standin::real`), so a K3s
//! restart, a cut cable or a dead host is felt the way a real one is.
//!
//! Clients reach the API the way an HA K3s cluster is set up: through a
//! fixed registration address, a TCP load balancer (HAProxy, in a namespace
//! of its own) in front of the three API servers. The coordinator and the
//! agents' kubelets use it; the servers' own components use their local API
//! server. The test process reaches it through a loopback [`Tunnel`].
//!
//! Binaries come from scripts/build-testbed.sh (`$K3SFLEET_TESTBED_BIN`,
//! default .cache/testbed/bin), kubectl from scripts/fetch-test-tools.sh
//! (`$KUBECTL_CURRENT`, default .cache/tools/kubectl-current/kubectl).

pub mod balancer;
pub mod longhorn;
mod manifests;
pub mod pki;
mod rbac;
mod settle;
pub mod tunnel;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_kubesim::Scenario;
use k3sfleet_kubesim::scenario::Role as NodeRole;
use k3sfleet_standin::real::{K3sLayout, RealHostConfig, ServerConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};

use self::longhorn::RealLonghorn;
pub use self::manifests::{render_yaml, write_manifests};
use self::pki::ClusterPki;
pub use self::rbac::COORDINATOR_RBAC;
use self::rbac::LAB_RBAC;
pub use self::settle::node_ready;
use self::tunnel::Tunnel;
use super::hosts::PreparedHost;
use crate::audit::Auditor;
use crate::netns::{NetHost, NetLab};
use crate::process::Process;

/// The coordinator's user name in the cluster (its client certificate's CN).
pub const COORDINATOR_USER: &str = "k3sfleet-coordinator";
/// The test's (or a person's) hands: a cluster admin through RBAC.
pub const OPERATOR_USER: &str = "lab-operator";
/// The lab itself setting the cluster up (O=system:masters).
pub const ADMIN_USER: &str = "lab-admin";
/// The auditor's read-only identity.
pub const AUDITOR_USER: &str = "k3sfleet-auditor";

/// The Service CIDR, K3s's default.
const SERVICE_CIDR: &str = "10.43.0.0/16";
/// The controller-manager's node-monitor grace: a node whose kubelet is
/// silent this long is NotReady (Kubernetes' default is 40 s).
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(12);

/// The KWOK stages every host's kubelet plays (attribution in the file).
const KWOK_STAGES: &str = include_str!("../../../../testbed/kwok/stages.yaml");
/// The tools of the real tier on this machine.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// etcd, etcdctl, etcdutl, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.
    pub bin: PathBuf,
    /// A current kubectl.
    pub kubectl: PathBuf,
    /// kubectl 1.20, if fetched.
    pub kubectl_1_20: Option<PathBuf>,
}

const TESTBED_TOOLS: [&str; 7] = [
    "etcd",
    "etcdctl",
    "etcdutl",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

impl Testbed {
    /// Finds the tools, or says which is missing and what builds it.
    pub fn locate() -> Result<Testbed, String> {
        // As scripts/build-testbed.sh and fetch-test-tools.sh place them.
        let bin = crate::testbed::bin_dir();
        let tools = std::env::var_os("K3SFLEET_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_path(".cache/tools"));
        for tool in TESTBED_TOOLS {
            crate::testbed::binary(tool, "kube etcd kwok")?;
        }
        let kubectl = std::env::var_os("KUBECTL_CURRENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| tools.join("kubectl-current/kubectl"));
        if !kubectl.is_file() {
            return Err(format!(
                "{} is missing: fetch it with scripts/fetch-test-tools.sh",
                kubectl.display()
            ));
        }
        let kubectl_1_20 = std::env::var_os("KUBECTL_1_20")
            .map(PathBuf::from)
            .or_else(|| Some(tools.join("kubectl-1.20/kubectl")))
            .filter(|path| path.is_file());
        Ok(Testbed {
            bin: std::fs::canonicalize(&bin).unwrap_or(bin),
            kubectl,
            kubectl_1_20,
        })
    }
}

/// Why the real tier cannot run here, or `None` if it can.
pub fn unavailable_reason() -> Option<String> {
    if let Some(reason) = crate::netns::unavailable_reason() {
        return Some(reason);
    }
    if let Err(reason) = Testbed::locate() {
        return Some(reason);
    }
    if let Err(err) = balancer::haproxy() {
        return Some(err.to_string());
    }
    None
}

/// One host of the real cluster, before it is created.
#[derive(Debug, Clone)]
pub struct RealHostPlan {
    pub name: String,
    pub server: bool,
    pub address: Ipv4Addr,
    pub config: RealHostConfig,
}

/// The running real cluster.
pub struct RealCluster {
    pub dir: PathBuf,
    pub testbed: Testbed,
    /// The load balancer's address on the lab network.
    pub registration: SocketAddr,
    /// 127.0.0.1:<port> leading to the registration address.
    pub api: Tunnel,
    /// Kubeconfigs (0600) through the tunnel: for the test process and kubectl.
    pub admin_kubeconfig: PathBuf,
    pub operator_kubeconfig: PathBuf,
    /// The coordinator's identity, through the tunnel (tests driving the drain engine in-process).
    pub coordinator_kubeconfig_local: PathBuf,
    /// The coordinator's kubeconfig as it uses it, inside the lab network.
    pub coordinator_kubeconfig: PathBuf,
    servers: Vec<(String, K3sLayout)>,
    observer: NetHost,
    pki: ClusterPki,
    auditor: Option<Auditor>,
    longhorn: Option<RealLonghorn>,
    balancer: Process,
    client: Option<kube::Client>,
    /// Last: the tunnels and watchers run on it.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("dir", &self.dir)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// The test process's own host on the lab network (the balancer is at the
/// cluster's address, 10.77.0.2).
pub const OBSERVER_OCTET: u8 = 3;

impl RealCluster {
    /// Plans every host's configuration (addresses from `address_of`).
    pub fn plan(
        dir: &Path,
        scenario: &Scenario,
        address_of: impl Fn(usize) -> Ipv4Addr,
        registration: Ipv4Addr,
    ) -> anyhow::Result<Vec<RealHostPlan>> {
        let testbed = Testbed::locate().map_err(anyhow::Error::msg)?;
        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES)?;
        let servers: Vec<(usize, &str)> = scenario
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == NodeRole::Server)
            .map(|(i, n)| (i, n.name.as_str()))
            .collect();
        if servers.is_empty() {
            bail!("the real tier needs at least one server node in the scenario");
        }
        let initial_cluster = servers
            .iter()
            .map(|(i, name)| format!("{name}=https://{}:2380", address_of(*i)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(scenario
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let server = node.role == NodeRole::Server;
                let address = address_of(index);
                RealHostPlan {
                    name: node.name.clone(),
                    server,
                    address,
                    config: RealHostConfig {
                        node: node.name.clone(),
                        address,
                        bin_dir: testbed.bin.clone(),
                        kwok_stages: stages.clone(),
                        api_url: if server {
                            "https://127.0.0.1:6443".into()
                        } else {
                            format!("https://{registration}:{}", balancer::API_PORT)
                        },
                        pod_cidr: format!("10.42.{index}.0/24"),
                        labels: node.labels.clone(),
                        node_lease_seconds: 8,
                        kwok_log_level: "WARN".into(),
                        restart_delay: Duration::from_secs(5),
                        owner_pid: Some(std::process::id()),
                        server: server.then(|| ServerConfig {
                            etcd_initial_cluster: initial_cluster.clone(),
                            etcd_cluster_token: "k3sfleet-lab".into(),
                            service_cidr: SERVICE_CIDR.into(),
                            node_monitor_grace_period: NODE_MONITOR_GRACE,
                            registration_address: registration,
                        }),
                    },
                }
            })
            .collect())
    }

    /// Brings the cluster up on the lab network: the balancer on `balancer`,
    /// the servers' K3s (all at once: a three-member etcd needs two to
    /// start), the RBAC and the scenario's nodes and workloads (kubectl
    /// apply), then every agent's K3s; waits until every node is Ready and
    /// every workload settled, and starts the auditor.
    pub fn start(
        dir: &Path,
        scenario: &Scenario,
        net: &NetLab,
        plans: &[RealHostPlan],
        hosts: &[PreparedHost],
    ) -> anyhow::Result<RealCluster> {
        let started = Instant::now();
        let testbed = Testbed::locate().map_err(anyhow::Error::msg)?;
        let balancer_host = net.host("balancer").clone();
        let observer = net.host("observer").clone();
        let registration = SocketAddr::new(balancer_host.address.into(), balancer::API_PORT);
        let pki = ClusterPki::generate()?;

        // Every host's certificates and kubeconfigs, at K3s's paths.
        for (plan, host) in plans.iter().zip(hosts) {
            let layout = host.layout();
            if plan.server {
                pki.write_server(&layout, &plan.name, plan.address, balancer_host.address)?;
                std::fs::write(layout.audit_policy(), crate::audit::log::POLICY)?;
            }
            pki.write_kubelet(&layout, &plan.name, &plan.config.api_url)?;
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("real-cluster")
            .enable_all()
            .build()?;
        let api = Tunnel::start(runtime.handle(), observer.clone(), registration, 0)?;
        let local = format!("https://{}", api.local);
        let kubeconfig = |name: &str, user: &str, groups: &[&str], server: &str| {
            let path = dir.join(name);
            pki.write_kubeconfig(&path, server, user, groups)
                .map(|()| path)
        };
        let admin_kubeconfig =
            kubeconfig("admin.kubeconfig", ADMIN_USER, &["system:masters"], &local)?;
        let operator_kubeconfig = kubeconfig("operator.kubeconfig", OPERATOR_USER, &[], &local)?;
        let coordinator_kubeconfig_local = kubeconfig(
            "coordinator-local.kubeconfig",
            COORDINATOR_USER,
            &[],
            &local,
        )?;
        let coordinator_kubeconfig = kubeconfig(
            "coordinator.kubeconfig",
            COORDINATOR_USER,
            &[],
            &format!("https://{registration}"),
        )?;
        let auditor_kubeconfig = kubeconfig("auditor.kubeconfig", AUDITOR_USER, &[], &local)?;

        let server_list: Vec<(String, Ipv4Addr)> = plans
            .iter()
            .filter(|p| p.server)
            .map(|p| (p.name.clone(), p.address))
            .collect();
        let ca = dir.join("cluster-ca.crt");
        std::fs::write(&ca, pki.cluster.cert_pem())?;
        let balancer = balancer::start(
            &balancer_host,
            dir,
            &balancer::haproxy_config(registration, &server_list, &ca),
        )?;

        let mut cluster = RealCluster {
            dir: dir.to_owned(),
            testbed,
            registration,
            api,
            admin_kubeconfig,
            operator_kubeconfig,
            coordinator_kubeconfig_local,
            coordinator_kubeconfig,
            servers: plans
                .iter()
                .zip(hosts)
                .filter(|(p, _)| p.server)
                .map(|(p, h)| (p.name.clone(), h.layout()))
                .collect(),
            observer,
            pki,
            auditor: None,
            longhorn: None,
            balancer,
            client: None,
            runtime: Some(runtime),
        };

        // A three-member etcd cluster needs two members to start: start the
        // servers together.
        std::thread::scope(|scope| {
            let starting: Vec<_> = hosts
                .iter()
                .filter(|h| h.server)
                .map(|h| scope.spawn(|| h.start_k3s()))
                .collect();
            starting
                .into_iter()
                .try_for_each(|s| s.join().expect("starting a server does not panic"))
        })?;
        let client = cluster.wait_for_api(Duration::from_secs(240))?;
        cluster.client = Some(client);
        eprintln!(
            "real cluster: API up through the balancer after {:.1}s",
            started.elapsed().as_secs_f64()
        );

        let manifests = dir.join("manifests");
        write_manifests(&manifests, scenario)?;
        std::fs::write(
            manifests.join("00-rbac.yaml"),
            format!("{COORDINATOR_RBAC}---\n{LAB_RBAC}"),
        )?;
        cluster.apply(&manifests.join("00-rbac.yaml"))?;
        cluster.apply(&manifests.join("01-nodes.yaml"))?;
        for host in hosts.iter().filter(|h| !h.server) {
            host.start_k3s()?;
        }
        for file in [
            "02-namespaces.yaml",
            "03-deployments.yaml",
            "04-statefulsets.yaml",
            "05-daemonsets.yaml",
            "06-pods.yaml",
            "07-poddisruptionbudgets.yaml",
        ] {
            cluster.apply(&manifests.join(file))?;
        }
        cluster.wait_settled(scenario, Duration::from_secs(300))?;
        eprintln!(
            "real cluster: {} nodes Ready, workloads settled after {:.1}s",
            scenario.nodes.len(),
            started.elapsed().as_secs_f64()
        );

        cluster.longhorn = cluster.run(RealLonghorn::start(cluster.client(), scenario.clone()))?;
        if let Some(longhorn) = &cluster.longhorn {
            longhorn.wait_settled(Duration::from_secs(120))?;
            eprintln!(
                "real cluster: the simulated Longhorn's instance managers and budgets up after \
                 {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }

        let auditor_client = cluster.run(client_from(auditor_kubeconfig))?;
        let logs = cluster
            .servers
            .iter()
            .map(|(_, layout)| layout.audit_log())
            .collect();
        let auditor = Auditor::start(
            cluster.runtime().handle(),
            auditor_client,
            logs,
            COORDINATOR_USER,
        );
        auditor.wait_synced(Duration::from_secs(60))?;
        cluster.auditor = Some(auditor);
        Ok(cluster)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("running until dropped")
    }

    /// Runs `work` on the cluster's runtime and waits for it (from any
    /// thread, async or not: the caller's thread blocks meanwhile).
    pub fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        self.runtime().spawn(async move {
            let _ = done.send(work.await);
        });
        result
            .recv()
            .expect("the cluster's runtime runs until dropped")
    }

    /// A loopback port leading to `remote` on the lab network (the
    /// coordinator, for an operator's shell), for as long as the cluster runs.
    pub fn tunnel_to(&self, remote: SocketAddr) -> anyhow::Result<Tunnel> {
        let observer = self.observer.clone();
        Tunnel::start(self.runtime().handle(), observer, remote, 0)
    }

    /// The lab's own (admin) client, for looking at the cluster.
    pub fn client(&self) -> kube::Client {
        self.client.clone().expect("set once the API answered")
    }

    /// The simulated Longhorn, when the scenario has one.
    pub fn longhorn(&self) -> Option<&RealLonghorn> {
        self.longhorn.as_ref()
    }

    pub fn auditor(&self) -> &Auditor {
        self.auditor.as_ref().expect("started with the cluster")
    }

    /// The servers' names and K3s layouts (their audit logs, etcd TLS files).
    pub fn servers(&self) -> &[(String, K3sLayout)] {
        &self.servers
    }

    pub fn pki(&self) -> &ClusterPki {
        &self.pki
    }

    fn wait_for_api(&self, timeout: Duration) -> anyhow::Result<kube::Client> {
        let deadline = Instant::now() + timeout;
        let kubeconfig = self.admin_kubeconfig.clone();
        let client = self.run(client_from(kubeconfig))?;
        loop {
            let probe = client.clone();
            let answer = self.run(async move {
                let request = http::Request::get("/readyz").body(Vec::new())?;
                probe
                    .request_text(request)
                    .await
                    .map_err(anyhow::Error::from)
            });
            match answer {
                Ok(text) if text.trim() == "ok" => return Ok(client),
                _ if Instant::now() >= deadline => bail!(
                    "the API servers did not become ready through the balancer within {timeout:?} \
                     (last answer: {}); see {}/hosts/server-*/root/.standin/logs",
                    match answer {
                        Ok(text) => text,
                        Err(err) => format!("{err:#}"),
                    },
                    self.dir.display()
                ),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// `kubectl apply -f file` as the lab's admin.
    fn apply(&self, file: &Path) -> anyhow::Result<()> {
        if std::fs::read_to_string(file)?.trim().is_empty() {
            return Ok(());
        }
        let output = self
            .kubectl_as(&self.admin_kubeconfig)
            .args(["apply", "-f"])
            .arg(file)
            .output()?;
        if !output.status.success() {
            bail!(
                "kubectl apply -f {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// The current kubectl as `kubeconfig`'s user.
    pub fn kubectl_as(&self, kubeconfig: &Path) -> Command {
        let mut command = Command::new(&self.testbed.kubectl);
        command.env("KUBECONFIG", kubeconfig);
        command
    }

    /// Every node, as the API has it now.
    pub fn nodes(&self) -> anyhow::Result<Vec<Node>> {
        let api = Api::<Node>::all(self.client());
        Ok(self
            .run(async move { api.list(&ListParams::default()).await })?
            .items)
    }

    pub fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let api = Api::<Pod>::all(self.client());
        Ok(self
            .run(async move { api.list(&ListParams::default()).await })?
            .items)
    }

    pub fn pdbs(&self) -> anyhow::Result<Vec<PodDisruptionBudget>> {
        let api = Api::<PodDisruptionBudget>::all(self.client());
        Ok(self
            .run(async move { api.list(&ListParams::default()).await })?
            .items)
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        self.auditor = None;
        self.longhorn = None;
        self.client = None;
        self.balancer.kill();
        if let Some(runtime) = self.runtime.take() {
            // Also safe inside another runtime (a test's).
            runtime.shutdown_background();
        }
    }
}

/// A client for `kubeconfig` (no silent retries, as the coordinator's).
pub async fn client_from(kubeconfig: PathBuf) -> anyhow::Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}
