//! The lab's hosts: a stand-in host root per node with K3s installed and its
//! unit, the kubelet it runs (the stand-in kubelet against kubesim, or the
//! real tier's launcher), and a real agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use k3sfleet_pki::{ClientCertRequest, FleetCa, K3sRole, Role};
use k3sfleet_standin::real::{K3sLayout, RealHostConfig};
use k3sfleet_standin::{Distro, HostToml, K3sBehaviour, StandinHost, k3s_binary};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LabSpec;
use super::coordinator::command_in;
use crate::netns::NetHost;
use crate::process::{Process, binary};

/// One node: its stand-in host and its agent.
#[derive(Debug)]
pub struct LabHost {
    pub name: String,
    pub server: bool,
    pub host: StandinHost,
    pub config: PathBuf,
    pub agent: Process,
    /// Its network namespace, in a [`super::Network::Namespaces`] lab.
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

    /// The K3s version its kubelet would report now, from the binary on disk.
    pub fn installed_version(&self) -> Option<String> {
        let binary = self.host.k3s()?;
        let text = String::from_utf8_lossy(&binary);
        text.lines()
            .find_map(|line| line.strip_prefix("# k3s stand-in "))
            .map(str::to_string)
    }

    /// The K3s unit on this host.
    pub fn unit(&self) -> &'static str {
        unit(self.server)
    }

    /// `systemctl <verb> <k3s unit>` on the host (in its namespace).
    pub fn systemctl(&self, verb: &str) -> anyhow::Result<()> {
        systemctl(
            &self.host,
            self.netns.as_ref(),
            verb,
            self.unit(),
            &self.name,
        )
    }
}

impl Drop for LabHost {
    fn drop(&mut self) {
        stop_k3s(&[&self.host]);
    }
}

fn unit(server: bool) -> &'static str {
    if server {
        "k3s.service"
    } else {
        "k3s-agent.service"
    }
}

fn systemctl(
    host: &StandinHost,
    netns: Option<&NetHost>,
    verb: &str,
    unit: &str,
    name: &str,
) -> anyhow::Result<()> {
    let output = command_in(netns, host.tool("systemctl"))
        .args([verb, unit])
        .output()?;
    if !output.status.success() {
        bail!(
            "systemctl {verb} {unit} on {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// What a host's K3s runs as its kubelet.
#[derive(Debug)]
pub enum Kubelet<'a> {
    /// The stand-in kubelet, reporting to kubesim at `api`.
    Standin { api: &'a str },
    /// The real tier's launcher with this configuration.
    Real { config: &'a RealHostConfig },
}

/// A host laid out with K3s `from_version` installed, not started yet.
#[derive(Debug)]
pub struct PreparedHost {
    pub name: String,
    pub server: bool,
    pub home: PathBuf,
    pub host: StandinHost,
    pub netns: Option<NetHost>,
}

impl PreparedHost {
    pub fn layout(&self) -> K3sLayout {
        K3sLayout::new(self.host.root())
    }

    /// `systemctl start` of its K3s unit.
    pub fn start_k3s(&self) -> anyhow::Result<()> {
        systemctl(
            &self.host,
            self.netns.as_ref(),
            "start",
            unit(self.server),
            &self.name,
        )
    }
}

pub fn prepare_host(
    dir: &Path,
    spec: &LabSpec,
    name: &str,
    server: bool,
    kubelet: Kubelet<'_>,
    netns: Option<NetHost>,
) -> anyhow::Result<PreparedHost> {
    let home = dir.join("hosts").join(name);
    let root = home.join("root");
    std::fs::create_dir_all(&root)?;
    let host = StandinHost::create(&root, Distro::Debian)?;
    host.install_k3s(&k3s_binary(
        &spec.from_version,
        K3sBehaviour::Healthy,
        spec.binary_size,
    ))?;
    host.install_unit(unit(server))?;
    // A fleet host is already on the tailnet; a logged-out one would warn.
    host.set_tailscale_status(&format!(
        r#"{{"Version":"1.76.6","BackendState":"Running","Self":{{"HostName":"{name}","TailscaleIPs":["100.64.0.7"],"Online":true,"KeyExpiry":"2099-01-01T00:00:00Z"}},"Health":[]}}"#
    ))?;
    let pace = spec.pace.get(name).copied().unwrap_or_default();
    if !pace.k3s_start.is_zero() {
        host.write(
            "/.standin/k3s-start-delay",
            &format!("{:.3}\n", pace.k3s_start.as_secs_f64()),
        )?;
    }
    match kubelet {
        Kubelet::Standin { api } => {
            let mut kubelet_args = format!(
                "--ready-after {}ms --heartbeat 1s --standin-root {}",
                pace.ready_after.as_millis().max(500),
                host.root().display()
            );
            if server {
                kubelet_args.push_str(&format!(" --server --etcd-health {}", etcd_health(&home)?));
            }
            host.write(
                "/.standin/kubelet.env",
                &format!(
                    "KUBELET='{}'\nAPI='{api}'\nNODE='{name}'\nKUBELET_ARGS='{kubelet_args}'\n",
                    binary("k3sfleet-standin-kubelet")?.display()
                ),
            )?;
        }
        Kubelet::Real { config } => {
            let layout = K3sLayout::new(host.root());
            std::fs::write(layout.config(), config.to_toml())?;
            std::fs::write(
                layout.launcher_env(),
                format!(
                    "LAUNCHER='{}'\n",
                    binary("k3sfleet-standin-k3s-real")?.display()
                ),
            )?;
        }
    }
    Ok(PreparedHost {
        name: name.to_string(),
        server,
        home,
        host,
        netns,
    })
}

/// Hosts prepared (their K3s maybe started) that no [`LabHost`] owns yet: if
/// the lab fails to start, dropping them stops their K3s, so no kubelet,
/// etcd member or API server outlives it.
#[derive(Debug, Default)]
pub struct PreparedHosts(Vec<PreparedHost>);

impl PreparedHosts {
    pub fn push(&mut self, host: PreparedHost) {
        self.0.push(host);
    }

    /// The next host, now the caller's to look after.
    pub fn next_host(&mut self) -> Option<PreparedHost> {
        (!self.0.is_empty()).then(|| self.0.remove(0))
    }

    pub fn as_slice(&self) -> &[PreparedHost] {
        &self.0
    }
}

impl Drop for PreparedHosts {
    fn drop(&mut self) {
        stop_k3s(&self.0.iter().map(|h| &h.host).collect::<Vec<_>>());
    }
}

/// Where a kubesim-tier server's stand-in kubelet answers etcd's /health:
/// a loopback port picked once and remembered in the host's home.
fn etcd_health(home: &Path) -> anyhow::Result<String> {
    let file = home.join("etcd-health-address");
    if let Ok(address) = std::fs::read_to_string(&file) {
        return Ok(address.trim().to_string());
    }
    let address = format!("127.0.0.1:{}", super::coordinator::free_port()?);
    std::fs::write(&file, &address)?;
    Ok(address)
}

/// Issues the host's agent certificate, writes its config and starts it.
pub fn start_agent(
    prepared: PreparedHost,
    dir: &Path,
    ca: &FleetCa,
    spec: &LabSpec,
    coordinator: SocketAddr,
    real: bool,
) -> anyhow::Result<LabHost> {
    let PreparedHost {
        name,
        server,
        home,
        host,
        netns,
    } = prepared;
    let issued = ca.issue_client(&ClientCertRequest {
        name: name.clone(),
        role: Role::Agent,
        k3s_role: Some(if server {
            K3sRole::Server
        } else {
            K3sRole::Agent
        }),
        validity: Duration::from_secs(24 * 3600),
    })?;
    k3sfleet_pki::write_public_file(&home.join("agent.crt"), &issued.cert_pem, true)?;
    k3sfleet_pki::write_private_file(
        &home.join("agent.key"),
        issued.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    let host_toml = HostToml {
        // The real tier's servers run a real etcd member where the agent
        // looks by default (https://127.0.0.1:2379, K3s's client certificate).
        etcd_health_url: (server && !real)
            .then(|| etcd_health(&home).map(|addr| format!("http://{addr}/health")))
            .transpose()?,
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
        name,
        server,
        host,
        config,
        agent,
        netns,
    })
}

/// Ends the K3s (stand-in kubelet or real launcher) of every host in
/// `hosts`, and keeps it from coming back: SIGTERM to all, then up to 20 s
/// for them to stop (etcd and the API servers shut down cleanly), then
/// SIGKILL to whatever is left of each process group.
pub fn stop_k3s(hosts: &[&StandinHost]) {
    let mut groups = Vec::new();
    for host in hosts {
        for env in ["/.standin/kubelet.env", "/.standin/k3s-real.env"] {
            let _ = std::fs::remove_file(host.path(env));
        }
        let pid_file = host.path("/.standin/kubelet.pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            groups.push(Pid::from_raw(pid));
        }
        let _ = std::fs::remove_file(pid_file);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && groups.iter().any(|pid| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in groups {
        // Each K3s was started with setsid: its group is its pid.
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
    }
}

/// Running, not a zombie.
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z')
}
