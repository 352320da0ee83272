//! A real coordinator process for load runs: its PKI, config and data in a
//! directory, an operator's CLI and channel, and restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k3sfleet_pki::{DialTarget, FixedClientCert, FleetCa};
use rustls::pki_types::ServerName;
use tonic::transport::Channel;

use super::Target;
use crate::lab::{admin_cli, create_pki_for, free_port, start_coordinator};
use crate::netns::NetHost;
use crate::process::Process;

/// The coordinator's port inside a network namespace of its own.
const NETNS_PORT: u16 = 7443;

#[derive(Debug)]
pub struct LoadCoordinator {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub ca: FleetCa,
    pub process: Process,
    config: PathBuf,
    pki: PathBuf,
    /// The namespace it runs in; `None`: this machine's loopback.
    netns: Option<NetHost>,
}

impl LoadCoordinator {
    /// Creates the PKI and config under `dir` and starts the coordinator on
    /// 127.0.0.1. `extra` is appended to the config's top-level keys.
    pub fn start(dir: &Path, extra: &str) -> anyhow::Result<LoadCoordinator> {
        Self::start_on(dir, extra, None)
    }

    /// As [`LoadCoordinator::start`], inside `netns` (at its address) if given.
    pub fn start_on(
        dir: &Path,
        extra: &str,
        netns: Option<NetHost>,
    ) -> anyhow::Result<LoadCoordinator> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        let pki = dir.join("pki");
        let addr: SocketAddr = match &netns {
            Some(host) => SocketAddr::new(host.address.into(), NETNS_PORT),
            None => format!("127.0.0.1:{}", free_port()?).parse()?,
        };
        let ca = create_pki_for(&pki, &[addr.ip().to_string()])?;
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndata_dir = \"{data}\"\n{extra}\n\n\
                 [tls]\nca = \"{pki}/ca.crt\"\ncert = \"{pki}/coordinator.crt\"\nkey = \"{pki}/coordinator.key\"\n\n\
                 [artifacts]\ndir = \"{artifacts}\"\n",
                data = dir.join("coordinator-data").display(),
                pki = pki.display(),
                artifacts = dir.join("artifacts").display(),
            ),
        )?;
        let mut coordinator = LoadCoordinator {
            dir,
            addr,
            ca,
            process: Process::placeholder("coordinator"),
            config,
            pki,
            netns,
        };
        coordinator.start_again()?;
        Ok(coordinator)
    }

    /// The fleet CA certificate and key files.
    pub fn ca_files(&self) -> (PathBuf, PathBuf) {
        (self.pki.join("ca.crt"), self.pki.join("ca.key"))
    }

    /// Where simulated agents connect.
    pub fn target(&self, source_addresses: usize) -> anyhow::Result<Target> {
        Ok(Target {
            address: self.addr,
            server_name: ServerName::try_from("127.0.0.1")?.to_owned(),
            roots: k3sfleet_pki::root_store(&self.pki.join("ca.crt"))?,
            source_addresses: (1..=source_addresses)
                .map(|i| std::net::IpAddr::from([127, 0, 0, i as u8]))
                .collect(),
            connect_timeout: Duration::from_secs(20),
        })
    }

    pub fn pid(&self) -> anyhow::Result<i32> {
        Ok(self
            .process
            .pid()
            .context("the coordinator is not running")?
            .as_raw())
    }

    /// A channel as the lab's admin.
    pub async fn admin_channel(&self) -> anyhow::Result<Channel> {
        let identity =
            k3sfleet_pki::certified_key(&self.pki.join("admin.crt"), &self.pki.join("admin.key"))?;
        let tls = k3sfleet_pki::client_config(
            k3sfleet_pki::root_store(&self.pki.join("ca.crt"))?,
            Some(Arc::new(FixedClientCert(identity))),
        );
        Ok(k3sfleet_pki::dial(&DialTarget::new(self.addr.to_string()), Arc::new(tls)).await?)
    }

    /// The `k3sfleet` CLI as the admin (inside the coordinator's namespace).
    pub fn cli(&self) -> anyhow::Result<Command> {
        admin_cli(self.netns.as_ref(), &self.dir, self.addr, &self.pki)
    }

    /// Runs `k3sfleet nodes -o json`; returns the nodes and how long it took.
    pub fn nodes_json(&self) -> anyhow::Result<(Vec<serde_json::Value>, Duration)> {
        let started = Instant::now();
        let output = self.cli()?.args(["nodes", "-o", "json"]).output()?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            output.status.success(),
            "k3sfleet nodes -o json failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("k3sfleet nodes -o json printed no JSON")?;
        let nodes = value["nodes"].as_array().cloned().unwrap_or_default();
        Ok((nodes, elapsed))
    }

    /// Stops the coordinator (SIGTERM, or SIGKILL when `crash`).
    pub fn stop(&mut self, crash: bool) {
        if crash {
            self.process.kill();
        } else {
            self.process.stop();
        }
    }

    /// Starts it again on the same data; returns once it listens.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("coordinator.log");
        self.process = start_coordinator(&self.config, self.addr, &log, self.netns.as_ref())?;
        Ok(())
    }
}

/// Nodes in `k3sfleet nodes -o json` output that are connected.
pub fn connected_nodes(nodes: &[serde_json::Value]) -> usize {
    nodes
        .iter()
        .filter(|n| n["connectivity"] == "CONNECTIVITY_CONNECTED")
        .count()
}
