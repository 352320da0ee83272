//! A whole fleet on one machine: a Kubernetes cluster, a coordinator, and
//! one real agent per node on its own stand-in host whose K3s runs the
//! node's kubelet. The cluster is either kubesim ([`ClusterKind::KubeSim`]:
//! the simulated API server, stand-in kubelets; fast) or the real tier
//! ([`ClusterKind::Real`]: upstream etcd and control plane on the server
//! hosts, KWOK kubelets; see [`real`]). On loopback by default; with
//! [`Network::Namespaces`] (always, on the real tier) every host gets a
//! network namespace and an address of its own, so hosts can be cut off.
//!
//! Tests, the demo and the benchmarks use the same [`Lab`] on either tier:
//! [`Lab::nodes`], [`Lab::cordoned_nodes`], [`Lab::safety`], cut/heal,
//! [`Lab::crash_coordinator`] and [`Lab::cli`] work on both.

mod coordinator;
mod hosts;
pub mod real;
mod views;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_kubesim::scenario::{KubeletMode, Role as NodeKind};
use k3sfleet_kubesim::{KubeSim, Running as KubeSimRunning, Scenario};
use k3sfleet_standin::{K3sBehaviour, k3s_binary, write_release};

use self::coordinator::{CoordinatorConfig, command_in};
pub(crate) use self::coordinator::{admin_cli, create_pki_for, free_port, start_coordinator};
pub use self::hosts::LabHost;
use self::hosts::{Kubelet, PreparedHosts, prepare_host, start_agent, stop_k3s};
use self::real::RealCluster;
pub use self::views::Safety;
use crate::netns::{NetHost, NetLab};
use crate::process::Process;

/// The demo's cluster: 3 servers, 15 workers, a small shop with PDBs.
pub const DEMO_SCENARIO: &str = include_str!("../../../kubesim/scenarios/demo.toml");
/// A small cluster for tests: 3 servers, 4 workers.
pub const SMALL_SCENARIO: &str = include_str!("../../scenarios/small.toml");
/// Longhorn volumes and databases (sim/scenarios/stateful.toml).
pub const STATEFUL_SCENARIO: &str = include_str!("../../scenarios/stateful.toml");

/// Where the lab's processes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Everything on this machine's loopback.
    #[default]
    Loopback,
    /// The cluster, the coordinator and every node in a network namespace
    /// of its own with its own address (needs root, see [`crate::netns`]),
    /// so that a host can really drop off the network.
    Namespaces,
}

/// Which Kubernetes the lab runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClusterKind {
    /// kubesim, the simulated API server, with stand-in kubelets.
    #[default]
    KubeSim,
    /// Upstream etcd, kube-apiserver, controller-manager and scheduler on
    /// the server hosts, KWOK kubelets, an HAProxy registration address
    /// (needs root and scripts/build-testbed.sh; see [`real`]).
    Real,
}

/// Addresses on the namespaces' private network (10.77.0.x).
const COORDINATOR_OCTET: u8 = 1;
/// kubesim's host, or the real tier's load balancer.
const CLUSTER_OCTET: u8 = 2;
const FIRST_NODE_OCTET: u8 = 10;
const COORDINATOR_PORT: u16 = 7443;
const KUBE_API_PORT: u16 = 6443;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub scenario: Scenario,
    /// The K3s version every node starts on.
    pub from_version: String,
    /// The release the coordinator holds, ready to roll out.
    pub to_version: String,
    /// Releases whose binary fails to start, for failure tests.
    pub failing_versions: Vec<String>,
    pub report_interval: String,
    /// Extra top-level keys for the coordinator's config.
    pub coordinator_extra: String,
    /// Size of each stand-in K3s binary, so downloads take some time.
    pub binary_size: usize,
    pub network: Network,
    pub cluster: ClusterKind,
    /// How each host paces its K3s restart and its kubelet's start (by node
    /// name); hosts not named start at once.
    pub pace: BTreeMap<String, HostPace>,
}

/// How long a host's K3s takes to come back: real hosts differ (disks,
/// images to load, CPUs), and a scheduler must not be judged on a fleet of
/// identical ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostPace {
    /// The K3s service takes this long to become active after a restart.
    pub k3s_start: Duration,
    /// Its kubelet reports Ready this long after it starts.
    pub ready_after: Duration,
}

impl HostPace {
    /// The demo fleet's spread, fixed by name so runs compare: every third
    /// worker restarts K3s slowly, every fourth takes long to turn Ready,
    /// and one worker is slow at both.
    pub fn demo_spread(node: &str) -> HostPace {
        let index: u32 = node
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if !node.starts_with("worker-") {
            return HostPace::default();
        }
        let mut pace = HostPace {
            k3s_start: Duration::from_millis(500),
            ready_after: Duration::from_millis(500),
        };
        if index.is_multiple_of(3) {
            pace.k3s_start = Duration::from_secs(4);
        }
        if index.is_multiple_of(4) {
            pace.ready_after = Duration::from_secs(3);
        }
        if index == 7 {
            pace = HostPace {
                k3s_start: Duration::from_secs(6),
                ready_after: Duration::from_secs(4),
            };
        }
        pace
    }
}

impl LabSpec {
    pub fn new(scenario_toml: &str, origin: &str) -> anyhow::Result<LabSpec> {
        Ok(LabSpec {
            scenario: Scenario::from_toml(scenario_toml, origin)?,
            from_version: "v1.31.4+k3s1".into(),
            to_version: "v1.31.5+k3s1".into(),
            failing_versions: Vec::new(),
            report_interval: "1s".into(),
            coordinator_extra: String::new(),
            binary_size: 2 * 1024 * 1024,
            network: Network::Loopback,
            cluster: ClusterKind::KubeSim,
            pace: BTreeMap::new(),
        })
    }

    /// The demo fleet, its hosts paced as [`HostPace::demo_spread`] says.
    pub fn demo() -> anyhow::Result<LabSpec> {
        let mut spec = LabSpec::new(DEMO_SCENARIO, "kubesim/scenarios/demo.toml")?;
        spec.pace = spec
            .scenario
            .nodes
            .iter()
            .map(|node| (node.name.clone(), HostPace::demo_spread(&node.name)))
            .collect();
        Ok(spec)
    }

    pub fn small() -> anyhow::Result<LabSpec> {
        LabSpec::new(SMALL_SCENARIO, "sim/scenarios/small.toml")
    }

    /// Longhorn volumes, a single- and a three-instance database, a one-node workload.
    pub fn stateful() -> anyhow::Result<LabSpec> {
        LabSpec::new(STATEFUL_SCENARIO, "sim/scenarios/stateful.toml")
    }

    /// The same lab on the real tier (which needs a namespace per host).
    pub fn real(mut self) -> LabSpec {
        self.cluster = ClusterKind::Real;
        self.network = Network::Namespaces;
        self
    }
}

/// The lab's cluster.
#[derive(Debug)]
pub enum Cluster {
    KubeSim(KubeSimRunning),
    Real(Box<RealCluster>),
}

pub struct Lab {
    pub dir: PathBuf,
    pub spec: LabSpec,
    /// The coordinator's kubeconfig (as the coordinator uses it).
    pub kubeconfig: PathBuf,
    pub coordinator_addr: SocketAddr,
    coordinator_config: PathBuf,
    pub coordinator: Process,
    /// Before the cluster: agents and kubelets go first.
    pub hosts: Vec<LabHost>,
    /// `None` only once shut down.
    cluster: Option<Cluster>,
    pub artifacts: PathBuf,
    pki: PathBuf,
    /// Last, so every process is gone before the namespaces are removed.
    net: Option<NetLab>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// 10.77.0.x of the node at `index` in the scenario.
fn node_octet(index: usize) -> anyhow::Result<u8> {
    u8::try_from(usize::from(FIRST_NODE_OCTET) + index)
        .ok()
        .filter(|octet| *octet < 255)
        .context("too many nodes for one lab network")
}

impl Lab {
    /// Builds everything under `dir` and waits until every agent reports.
    pub async fn start(dir: &Path, spec: LabSpec) -> anyhow::Result<Lab> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        let real = spec.cluster == ClusterKind::Real;
        if real && spec.network != Network::Namespaces {
            bail!("the real tier runs every host in a network namespace: use Network::Namespaces");
        }
        let mut net = match spec.network {
            Network::Loopback => None,
            Network::Namespaces => Some(NetLab::create()?),
        };
        let mut add_host = |name: &str, octet: u8| -> anyhow::Result<Option<NetHost>> {
            net.as_mut()
                .map(|net| net.add_host(name, octet))
                .transpose()
        };
        let coordinator_netns = add_host("coordinator", COORDINATOR_OCTET)?;
        let cluster_netns = add_host(if real { "balancer" } else { "cluster" }, CLUSTER_OCTET)?;
        if real {
            add_host("observer", real::OBSERVER_OCTET)?;
        }
        let mut node_netns = Vec::new();
        for (index, node) in spec.scenario.nodes.iter().enumerate() {
            node_netns.push(add_host(&node.name, node_octet(index)?)?);
        }

        let coordinator_addr = match &coordinator_netns {
            Some(host) => SocketAddr::new(host.address.into(), COORDINATOR_PORT),
            None => format!("127.0.0.1:{}", free_port()?).parse()?,
        };
        let (cluster, kubeconfig, prepared) = if real {
            let net = net.as_ref().context("namespaces exist on the real tier")?;
            Self::start_real(&dir, &spec, net, node_netns)?
        } else {
            Self::start_kubesim(&dir, &spec, cluster_netns.as_ref(), node_netns).await?
        };

        let artifacts = dir.join("artifacts");
        write_release(
            &artifacts,
            &spec.to_version,
            &k3s_binary(&spec.to_version, K3sBehaviour::Healthy, spec.binary_size),
        )?;
        for version in &spec.failing_versions {
            write_release(
                &artifacts,
                version,
                &k3s_binary(version, K3sBehaviour::FailsToStart, spec.binary_size),
            )?;
        }
        let pki = dir.join("pki");
        // The coordinator is also reached through a loopback tunnel on the
        // real tier (by hand, `scripts/lab.sh up --real`).
        let sans = vec![coordinator_addr.ip().to_string(), "127.0.0.1".to_string()];
        let ca = create_pki_for(&pki, &sans)?;
        let coordinator_config = dir.join("coordinator.toml");
        CoordinatorConfig {
            // In its own namespace, every address of its host (a tailnet
            // address too, once the host joins one).
            listen: match coordinator_netns {
                Some(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), COORDINATOR_PORT),
                None => coordinator_addr,
            },
            dir: &dir,
            pki: &pki,
            artifacts: &artifacts,
            kubeconfig: &kubeconfig,
            extra: &spec.coordinator_extra,
        }
        .write(&coordinator_config)?;
        let coordinator = start_coordinator(
            &coordinator_config,
            coordinator_addr,
            &dir.join("coordinator.log"),
            coordinator_netns.as_ref(),
        )?;

        let mut prepared = prepared;
        let mut hosts = Vec::new();
        while let Some(host) = prepared.next_host() {
            hosts.push(start_agent(host, &dir, &ca, &spec, coordinator_addr, real)?);
        }
        let mut lab = Lab {
            dir,
            spec,
            kubeconfig,
            coordinator_addr,
            coordinator_config,
            coordinator,
            hosts,
            cluster: Some(cluster),
            artifacts,
            pki,
            net,
        };
        lab.wait_for_agents(Duration::from_secs(if real { 180 } else { 90 }))?;
        Ok(lab)
    }

    async fn start_kubesim(
        dir: &Path,
        spec: &LabSpec,
        cluster_netns: Option<&NetHost>,
        node_netns: Vec<Option<NetHost>>,
    ) -> anyhow::Result<(Cluster, PathBuf, PreparedHosts)> {
        let mut scenario = spec.scenario.clone();
        for node in &mut scenario.nodes {
            node.kubelet = KubeletMode::External;
            node.kubelet_version = Some(spec.from_version.clone());
        }
        let kubesim = match cluster_netns {
            Some(cluster) => KubeSim::serve_on(&scenario, cluster.listen(KUBE_API_PORT)?)?,
            None => KubeSim::start(&scenario, "127.0.0.1:0").await?,
        };
        let kubeconfig = dir.join("kubeconfig");
        kubesim.write_kubeconfig(&kubeconfig)?;
        let api = kubesim.url();
        let mut prepared = PreparedHosts::default();
        for (node, netns) in scenario.nodes.iter().zip(node_netns) {
            let server = matches!(node.role, NodeKind::Server);
            let host = prepare_host(
                dir,
                spec,
                &node.name,
                server,
                Kubelet::Standin { api: &api },
                netns,
            )?;
            let started = host.start_k3s();
            prepared.push(host);
            started?;
        }
        Ok((Cluster::KubeSim(kubesim), kubeconfig, prepared))
    }

    fn start_real(
        dir: &Path,
        spec: &LabSpec,
        net: &NetLab,
        node_netns: Vec<Option<NetHost>>,
    ) -> anyhow::Result<(Cluster, PathBuf, PreparedHosts)> {
        let address_of = |index: usize| -> Ipv4Addr {
            node_netns[index]
                .as_ref()
                .map_or(Ipv4Addr::LOCALHOST, |h| h.address)
        };
        let registration = net.host("balancer").address;
        let plans = RealCluster::plan(dir, &spec.scenario, address_of, registration)?;
        let mut prepared = PreparedHosts::default();
        for (plan, netns) in plans.iter().zip(node_netns.iter().cloned()) {
            prepared.push(prepare_host(
                dir,
                spec,
                &plan.name,
                plan.server,
                Kubelet::Real {
                    config: &plan.config,
                },
                netns,
            )?);
        }
        // On failure, dropping `prepared` stops whatever K3s it started.
        let cluster = RealCluster::start(dir, &spec.scenario, net, &plans, prepared.as_slice())?;
        let kubeconfig = cluster.coordinator_kubeconfig.clone();
        Ok((Cluster::Real(Box::new(cluster)), kubeconfig, prepared))
    }

    /// Whether this lab runs the real tier.
    pub fn is_real(&self) -> bool {
        matches!(self.cluster(), Cluster::Real(_))
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("the lab's cluster runs until shutdown")
    }

    /// The simulated cluster. Panics on the real tier: tests that inspect
    /// kubesim's state directly are kubesim-tier tests.
    pub fn kubesim(&self) -> &KubeSimRunning {
        match self.cluster() {
            Cluster::KubeSim(kubesim) => kubesim,
            Cluster::Real(_) => panic!("this lab runs the real tier, not kubesim"),
        }
    }

    /// The real cluster. Panics on the kubesim tier.
    pub fn real(&self) -> &RealCluster {
        match self.cluster() {
            Cluster::Real(real) => real,
            Cluster::KubeSim(_) => panic!("this lab runs kubesim, not the real tier"),
        }
    }

    /// A kubeconfig for an operator's kubectl, reachable from this machine.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        match self.cluster() {
            Cluster::Real(real) => real.operator_kubeconfig.clone(),
            Cluster::KubeSim(_) => self.kubeconfig.clone(),
        }
    }

    /// The `k3sfleet` CLI as this lab's admin (on the coordinator's host).
    pub fn cli(&self) -> anyhow::Result<Command> {
        admin_cli(
            self.coordinator_netns(),
            &self.dir,
            self.coordinator_addr,
            &self.pki,
        )
    }

    /// Where the admin CLI's credentials are: (CA, certificate, key).
    pub fn admin_credentials(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.pki.join("ca.crt"),
            self.pki.join("admin.crt"),
            self.pki.join("admin.key"),
        )
    }

    /// The coordinator's host, in a [`Network::Namespaces`] lab.
    pub fn coordinator_netns(&self) -> Option<&NetHost> {
        self.net.as_ref().map(|net| net.host("coordinator"))
    }

    /// The test process's own host on the lab network (real tier).
    pub fn observer_netns(&self) -> Option<&NetHost> {
        self.net
            .as_ref()
            .filter(|_| self.is_real())
            .map(|net| net.host("observer"))
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let output = self.cli()?.args(args).output()?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Runs the CLI and fails unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, stdout, stderr) = self.run_cli(args)?;
        if !ok {
            bail!("k3sfleet {args:?} failed: {stderr}");
        }
        Ok(stdout)
    }

    /// `k3sfleet upgrade status -o json`, parsed.
    pub fn rollout(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.cli_ok(&["upgrade", "status", "-o", "json"])?,
        )?)
    }

    pub fn host(&mut self, name: &str) -> &mut LabHost {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("a host of the lab")
    }

    /// Waits until every agent holds a session and has reported.
    pub fn wait_for_agents(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let expected = self.hosts.len();
        let deadline = Instant::now() + timeout;
        loop {
            self.coordinator.check_running()?;
            for host in &mut self.hosts {
                host.agent.check_running()?;
            }
            let (ok, stdout, _) = self.run_cli(&["nodes", "-o", "json"])?;
            if ok {
                let nodes: serde_json::Value = serde_json::from_str(&stdout)?;
                let ready = nodes["nodes"].as_array().map_or(0, |nodes| {
                    nodes
                        .iter()
                        .filter(|n| {
                            n["connectivity"] == "CONNECTIVITY_CONNECTED"
                                && n["health"] == "HEALTH_OK"
                        })
                        .count()
                });
                if ready == expected {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {expected} healthy agents:\n{stdout}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// kill -9 the coordinator and start it again on the same data.
    pub fn crash_coordinator(&mut self) -> anyhow::Result<()> {
        self.coordinator.kill();
        self.coordinator = start_coordinator(
            &self.coordinator_config,
            self.coordinator_addr,
            &self.coordinator.log,
            self.coordinator_netns(),
        )?;
        Ok(())
    }

    /// Pulls `host`'s network cable ("coordinator", "cluster", "balancer" or a node).
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        self.network()?.cut(host)
    }

    /// Plugs `host`'s cable back in.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.network()?.heal(host)
    }

    fn network(&self) -> anyhow::Result<&NetLab> {
        self.net
            .as_ref()
            .context("this lab runs on loopback: build it with Network::Namespaces")
    }

    /// One scrape of the coordinator's `/metrics`.
    pub fn coordinator_metrics(&self) -> anyhow::Result<String> {
        let address_file = self.dir.join("coordinator-data").join("metrics-address");
        let address = std::fs::read_to_string(&address_file)
            .with_context(|| format!("reading {}", address_file.display()))?;
        let address: SocketAddr = address
            .trim()
            .parse()
            .with_context(|| format!("{} holds no address", address_file.display()))?;
        let mut stream = match self.coordinator_netns() {
            Some(host) => host.connect(address)?,
            None => TcpStream::connect(address)?,
        };
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: coordinator\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!("unexpected answer from {address}: {response}"),
        }
    }

    /// Stops agents, coordinator, kubelets and the cluster.
    pub async fn shutdown(mut self) {
        for host in &mut self.hosts {
            host.agent.stop();
        }
        stop_k3s(&self.hosts.iter().map(|h| &h.host).collect::<Vec<_>>());
        self.hosts.clear();
        self.coordinator.stop();
        if let Some(Cluster::KubeSim(kubesim)) = self.cluster.take() {
            kubesim.shutdown().await;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Every host's K3s at once: a real server takes a few seconds to stop.
        stop_k3s(&self.hosts.iter().map(|h| &h.host).collect::<Vec<_>>());
    }
}

/// `program` run in `netns`, or here when `None` (for callers of the lab).
pub fn command_on(netns: Option<&NetHost>, program: PathBuf) -> Command {
    command_in(netns, program)
}
