//! A whole fleet on one machine: the simulated Kubernetes cluster, a
//! coordinator, and one real agent per node on its own stand-in host whose
//! K3s runs a stand-in kubelet that reports to the simulated cluster. On
//! loopback by default; with [`Network::Namespaces`] every one of them gets a
//! network namespace and an address of its own, so hosts can be cut off.
//!
//! Used by the demo, by the rollout tests and by benchmarks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_kubesim::scenario::{KubeletMode, Role as NodeKind};
use k3sfleet_kubesim::{KubeSim, Running as KubeSimRunning, Scenario};
use k3sfleet_pki::{ClientCertRequest, FleetCa, Role, ServerCertRequest};
use k3sfleet_standin::{Distro, HostToml, K3sBehaviour, StandinHost, k3s_binary, write_release};

use crate::netns::{NetHost, NetLab};
use crate::process::{Process, binary};

/// The demo's cluster: 3 servers, 15 workers, a small shop with PDBs.
pub const DEMO_SCENARIO: &str = include_str!("../../kubesim/scenarios/demo.toml");
/// A small cluster for tests: 3 servers, 4 workers.
pub const SMALL_SCENARIO: &str = include_str!("../scenarios/small.toml");

/// Where the lab's processes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Everything on this machine's loopback.
    #[default]
    Loopback,
    /// The simulated cluster, the coordinator and every node in a network
    /// namespace of its own with its own address (needs root, see
    /// [`crate::netns`]), so that a host can really drop off the network.
    Namespaces,
}

/// Addresses on the namespaces' private network (10.77.0.x).
const COORDINATOR_OCTET: u8 = 1;
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
        })
    }

    pub fn demo() -> anyhow::Result<LabSpec> {
        LabSpec::new(DEMO_SCENARIO, "kubesim/scenarios/demo.toml")
    }

    pub fn small() -> anyhow::Result<LabSpec> {
        LabSpec::new(SMALL_SCENARIO, "sim/scenarios/small.toml")
    }
}

/// One node: its stand-in host and its agent.
#[derive(Debug)]
pub struct LabHost {
    pub name: String,
    pub server: bool,
    pub host: StandinHost,
    pub config: PathBuf,
    pub agent: Process,
    /// Its network namespace, in a [`Network::Namespaces`] lab.
    pub netns: Option<NetHost>,
}

impl LabHost {
    /// Starts its agent again (after a stop or a kill).
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.agent.kill();
        let mut command = command_in(self.netns.as_ref(), binary("k3sfleet-agent")?);
        command.arg("run").arg("--config").arg(&self.config);
        self.agent = Process::spawn(&format!("agent {}", self.name), command, &self.agent.log)?;
        Ok(())
    }

    /// The K3s version its stand-in kubelet would report now, from the binary on disk.
    pub fn installed_version(&self) -> Option<String> {
        let binary = self.host.k3s()?;
        let text = String::from_utf8_lossy(&binary);
        text.lines()
            .find_map(|line| line.strip_prefix("# k3s stand-in "))
            .map(str::to_string)
    }
}

pub struct Lab {
    pub dir: PathBuf,
    pub spec: LabSpec,
    pub kubesim: KubeSimRunning,
    pub kubeconfig: PathBuf,
    pub coordinator_addr: SocketAddr,
    coordinator_config: PathBuf,
    pub coordinator: Process,
    pub hosts: Vec<LabHost>,
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

impl Lab {
    /// Builds everything under `dir` and waits until every agent reports.
    pub async fn start(dir: &Path, spec: LabSpec) -> anyhow::Result<Lab> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
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
        let cluster_netns = add_host("cluster", CLUSTER_OCTET)?;
        let mut node_netns = Vec::new();
        for (index, node) in spec.scenario.nodes.iter().enumerate() {
            let octet = u8::try_from(usize::from(FIRST_NODE_OCTET) + index)
                .ok()
                .filter(|octet| *octet < 255)
                .context("too many nodes for one lab network")?;
            node_netns.push(add_host(&node.name, octet)?);
        }

        let mut scenario = spec.scenario.clone();
        for node in &mut scenario.nodes {
            node.kubelet = KubeletMode::External;
            node.kubelet_version = Some(spec.from_version.clone());
        }
        let kubesim = match &cluster_netns {
            Some(cluster) => KubeSim::serve_on(&scenario, cluster.listen(KUBE_API_PORT)?)?,
            None => KubeSim::start(&scenario, "127.0.0.1:0").await?,
        };
        let kubeconfig = dir.join("kubeconfig");
        kubesim.write_kubeconfig(&kubeconfig)?;

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

        let coordinator_addr = match &coordinator_netns {
            Some(host) => SocketAddr::new(host.address.into(), COORDINATOR_PORT),
            None => format!("127.0.0.1:{}", free_port()?).parse()?,
        };
        let pki = dir.join("pki");
        let ca = create_pki_for(&pki, &coordinator_addr.ip().to_string())?;
        let coordinator_config = dir.join("coordinator.toml");
        std::fs::write(
            &coordinator_config,
            format!(
                "listen = \"{coordinator_addr}\"\ndata_dir = \"{data}\"\nreport_flush_interval = \"500ms\"\n{extra}\n\n\
                 [tls]\nca = \"{pki}/ca.crt\"\ncert = \"{pki}/coordinator.crt\"\nkey = \"{pki}/coordinator.key\"\n\
                 ca_key = \"{pki}/ca.key\"\n\n[artifacts]\ndir = \"{artifacts}\"\n\n[kubernetes]\nkubeconfig = \"{kubeconfig}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                data = dir.join("coordinator-data").display(),
                extra = spec.coordinator_extra,
                pki = pki.display(),
                artifacts = artifacts.display(),
                kubeconfig = kubeconfig.display(),
            ),
        )?;
        let coordinator = start_coordinator(
            &coordinator_config,
            coordinator_addr,
            &dir.join("coordinator.log"),
            coordinator_netns.as_ref(),
        )?;

        let mut hosts = Vec::new();
        for (node, netns) in scenario.nodes.iter().zip(node_netns) {
            let server = matches!(node.role, NodeKind::Server);
            hosts.push(create_host(
                &dir,
                &ca,
                &spec,
                &node.name,
                server,
                &kubesim.url(),
                coordinator_addr,
                netns,
            )?);
        }
        let mut lab = Lab {
            dir,
            spec,
            kubesim,
            kubeconfig,
            coordinator_addr,
            coordinator_config,
            coordinator,
            hosts,
            artifacts,
            pki,
            net,
        };
        lab.wait_for_agents(Duration::from_secs(90))?;
        Ok(lab)
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

    /// The coordinator's host, in a [`Network::Namespaces`] lab.
    fn coordinator_netns(&self) -> Option<&NetHost> {
        self.net.as_ref().map(|net| net.host("coordinator"))
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

    /// Pulls `host`'s network cable ("coordinator", "cluster" or a node).
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

    /// Nodes cordoned in the simulated cluster right now.
    pub fn cordoned_nodes(&self) -> Vec<String> {
        self.kubesim.inspect(|cluster| {
            cluster
                .nodes
                .iter()
                .filter(|n| {
                    n.spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false)
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect()
        })
    }

    /// Stops agents, coordinator, kubelets and the simulated cluster.
    pub async fn shutdown(mut self) {
        for host in &mut self.hosts {
            host.agent.stop();
        }
        self.hosts.clear();
        self.coordinator.stop();
        self.kubesim.shutdown().await;
    }
}

impl Drop for LabHost {
    fn drop(&mut self) {
        stop_kubelet(&self.host);
    }
}

/// Ends a host's stand-in kubelet, and keeps it from coming back.
fn stop_kubelet(host: &StandinHost) {
    let _ = std::fs::remove_file(host.path("/.standin/kubelet.env"));
    if let Ok(pid) = std::fs::read_to_string(host.path("/.standin/kubelet.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The fleet CA, the coordinator's certificate chain (for a coordinator
/// reached at `coordinator_san`) and an admin certificate.
pub(crate) fn create_pki_for(dir: &Path, coordinator_san: &str) -> anyhow::Result<FleetCa> {
    std::fs::create_dir_all(dir)?;
    let ca = FleetCa::generate("k3sfleet lab CA")?;
    ca.save(&dir.join("ca.crt"), &dir.join("ca.key"), true)?;
    let server = ca.issue_server(&ServerCertRequest {
        sans: vec![coordinator_san.into()],
        validity: Duration::from_secs(24 * 3600),
    })?;
    k3sfleet_pki::write_public_file(
        &dir.join("coordinator.crt"),
        &ca.chain_pem(&server.cert_pem),
        true,
    )?;
    k3sfleet_pki::write_private_file(
        &dir.join("coordinator.key"),
        server.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    let admin = ca.issue_client(&ClientCertRequest {
        name: "lab-admin".into(),
        role: Role::Admin,
        validity: Duration::from_secs(24 * 3600),
    })?;
    k3sfleet_pki::write_public_file(&dir.join("admin.crt"), &admin.cert_pem, true)?;
    k3sfleet_pki::write_private_file(
        &dir.join("admin.key"),
        admin.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    Ok(ca)
}

/// `program` run in `netns`, or here when `None`.
fn command_in(netns: Option<&NetHost>, program: PathBuf) -> Command {
    match netns {
        Some(host) => host.command(program),
        None => Command::new(program),
    }
}

/// Starts the coordinator (inside `netns` if given); returns once it listens.
pub(crate) fn start_coordinator(
    config: &Path,
    addr: SocketAddr,
    log: &Path,
    netns: Option<&NetHost>,
) -> anyhow::Result<Process> {
    let mut command = command_in(netns, binary("k3sfleet-coordinator")?);
    command.arg("run").arg("--config").arg(config);
    let mut process = Process::spawn("coordinator", command, log)?;
    let listening = || match netns {
        Some(host) => host.connect(addr).is_ok(),
        None => TcpStream::connect(addr).is_ok(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening() {
        process.check_running()?;
        if Instant::now() >= deadline {
            bail!("the coordinator did not listen on {addr} within 30s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(process)
}

/// The `k3sfleet` CLI as the admin whose certificate is in `pki`, talking to
/// the coordinator at `coordinator`; run in `netns` (the coordinator's host)
/// if given.
pub(crate) fn admin_cli(
    netns: Option<&NetHost>,
    home: &Path,
    coordinator: SocketAddr,
    pki: &Path,
) -> anyhow::Result<Command> {
    let mut command = command_in(netns, binary("k3sfleet")?);
    command
        .env("HOME", home)
        .env("K3SFLEET_COORDINATOR", coordinator.to_string())
        .env("K3SFLEET_CA", pki.join("ca.crt"))
        .env("K3SFLEET_CERT", pki.join("admin.crt"))
        .env("K3SFLEET_KEY", pki.join("admin.key"));
    Ok(command)
}

/// A stand-in host with K3s `from_version` running (its kubelet reporting to
/// `api`), and its agent started; both inside `netns` if given.
#[allow(clippy::too_many_arguments)]
fn create_host(
    dir: &Path,
    ca: &FleetCa,
    spec: &LabSpec,
    name: &str,
    server: bool,
    api: &str,
    coordinator: SocketAddr,
    netns: Option<NetHost>,
) -> anyhow::Result<LabHost> {
    let home = dir.join("hosts").join(name);
    let root = home.join("root");
    std::fs::create_dir_all(&root)?;
    let host = StandinHost::create(&root, Distro::Debian)?;
    host.install_k3s(&k3s_binary(
        &spec.from_version,
        K3sBehaviour::Healthy,
        spec.binary_size,
    ))?;
    let unit = if server {
        "k3s.service"
    } else {
        "k3s-agent.service"
    };
    host.install_unit(unit)?;
    // A fleet host is already on the tailnet; a logged-out one would warn.
    host.set_tailscale_status(&format!(
        r#"{{"Version":"1.76.6","BackendState":"Running","Self":{{"HostName":"{name}","TailscaleIPs":["100.64.0.7"],"Online":true,"KeyExpiry":"2099-01-01T00:00:00Z"}},"Health":[]}}"#
    ))?;

    let etcd = if server {
        Some(format!("127.0.0.1:{}", free_port()?))
    } else {
        None
    };
    let mut kubelet_args = format!(
        "--ready-after 500ms --heartbeat 1s --standin-root {}",
        host.root().display()
    );
    if let Some(etcd) = &etcd {
        kubelet_args.push_str(&format!(" --server --etcd-health {etcd}"));
    }
    host.write(
        "/.standin/kubelet.env",
        &format!(
            "KUBELET='{}'\nAPI='{api}'\nNODE='{name}'\nKUBELET_ARGS='{kubelet_args}'\n",
            binary("k3sfleet-standin-kubelet")?.display()
        ),
    )?;
    let started = command_in(netns.as_ref(), host.tool("systemctl"))
        .args(["start", unit])
        .output()?;
    if !started.status.success() {
        bail!(
            "starting {unit} on {name}: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    let issued = ca.issue_client(&ClientCertRequest {
        name: name.to_string(),
        role: Role::Agent,
        validity: Duration::from_secs(24 * 3600),
    })?;
    k3sfleet_pki::write_public_file(&home.join("agent.crt"), &issued.cert_pem, true)?;
    k3sfleet_pki::write_private_file(
        &home.join("agent.key"),
        issued.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    let host_toml = HostToml {
        etcd_health_url: etcd.map(|addr| format!("http://{addr}/health")),
        ..HostToml::default()
    };
    let config = home.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"{role}\"\nstate_dir = \"{home}/state\"\n\n[coordinator]\naddress = \"{coordinator}\"\nmax_reconnect_delay = \"2s\"\n\n\
             [tls]\nca = \"{pki}/ca.crt\"\ncert = \"{home}/agent.crt\"\nkey = \"{home}/agent.key\"\n\n\
             [report]\ninterval = \"{interval}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{host}",
            role = if server { "server" } else { "agent" },
            home = home.display(),
            pki = dir.join("pki").display(),
            interval = spec.report_interval,
            host = host_toml.render(&host),
        ),
    )?;
    let mut command = command_in(netns.as_ref(), binary("k3sfleet-agent")?);
    command.arg("run").arg("--config").arg(&config);
    let agent = Process::spawn(&format!("agent {name}"), command, &home.join("agent.log"))?;
    Ok(LabHost {
        name: name.to_string(),
        server,
        host,
        config,
        agent,
        netns,
    })
}
