//! The lab's coordinator: the fleet PKI, its configuration, starting it (in
//! its namespace, if any) and the admin CLI that talks to it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use k3sfleet_pki::{ClientCertRequest, FleetCa, Role, ServerCertRequest};

use crate::netns::NetHost;
use crate::process::{Process, binary};

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The fleet CA, the coordinator's certificate chain (for a coordinator
/// reached at any of `coordinator_sans`) and an admin certificate.
pub(crate) fn create_pki_for(dir: &Path, coordinator_sans: &[String]) -> anyhow::Result<FleetCa> {
    std::fs::create_dir_all(dir)?;
    let ca = FleetCa::generate("k3sfleet lab CA")?;
    ca.save(&dir.join("ca.crt"), &dir.join("ca.key"), true)?;
    let server = ca.issue_server(&ServerCertRequest {
        sans: coordinator_sans.to_vec(),
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
        k3s_role: None,
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

/// The coordinator's config file.
pub(crate) struct CoordinatorConfig<'a> {
    pub listen: SocketAddr,
    pub dir: &'a Path,
    pub pki: &'a Path,
    pub artifacts: &'a Path,
    pub kubeconfig: &'a Path,
    pub extra: &'a str,
}

impl CoordinatorConfig<'_> {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(
            path,
            format!(
                "listen = \"{listen}\"\ndata_dir = \"{data}\"\nreport_flush_interval = \"500ms\"\n{extra}\n\n\
                 [tls]\nca = \"{pki}/ca.crt\"\ncert = \"{pki}/coordinator.crt\"\nkey = \"{pki}/coordinator.key\"\n\
                 ca_key = \"{pki}/ca.key\"\n\n[artifacts]\ndir = \"{artifacts}\"\n\n[kubernetes]\nkubeconfig = \"{kubeconfig}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                listen = self.listen,
                data = self.dir.join("coordinator-data").display(),
                extra = self.extra,
                pki = self.pki.display(),
                artifacts = self.artifacts.display(),
                kubeconfig = self.kubeconfig.display(),
            ),
        )?;
        Ok(())
    }
}

/// `program` run in `netns`, or here when `None`.
pub(crate) fn command_in(netns: Option<&NetHost>, program: PathBuf) -> Command {
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
