//! Starts a local fleet: a fleet CA, a coordinator and agents as real
//! processes from the same build, each agent with its own host root.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_pki::{ClientCertRequest, FleetCa, Role, ServerCertRequest};

/// Where the k3sfleet binaries are: $K3SFLEET_BIN_DIR, else next to this program.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("K3SFLEET_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating this program")?;
    Ok(exe
        .parent()
        .context("this program has no directory")?
        .to_owned())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing; build it with `cargo build --release --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A process that is killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Process> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited with {status}:\n{log}", self.name);
        }
        Ok(())
    }

    /// SIGTERM, then wait up to 10 s.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One agent to start.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    /// "server" or "agent".
    pub role: String,
}

/// A running local fleet.
#[derive(Debug)]
pub struct LocalFleet {
    pub dir: PathBuf,
    pub coordinator_addr: SocketAddr,
    pub coordinator: Process,
    pub agents: Vec<Process>,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

impl LocalFleet {
    /// Creates the PKI under `dir` and starts a coordinator and the agents.
    pub fn start(
        dir: &Path,
        agents: &[AgentSpec],
        report_interval: &str,
    ) -> anyhow::Result<LocalFleet> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        let ca = FleetCa::generate("k3sfleet demo CA")?;
        ca.save(&pki.join("ca.crt"), &pki.join("ca.key"), true)?;
        let server = ca.issue_server(&ServerCertRequest {
            sans: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(24 * 3600),
        })?;
        write_pair(
            &pki,
            "coordinator",
            &ca.chain_pem(&server.cert_pem),
            server.key_pem.as_deref(),
        )?;

        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let coordinator_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{coordinator_addr}\"\ndata_dir = \"{data}\"\n\n[tls]\nca = \"{pki}/ca.crt\"\n\
                 cert = \"{pki}/coordinator.crt\"\nkey = \"{pki}/coordinator.key\"\n",
                data = dir.join("coordinator-data").display(),
                pki = pki.display(),
            ),
        )?;
        let mut command = Command::new(binary("k3sfleet-coordinator")?);
        command.arg("run").arg("--config").arg(&config);
        let mut coordinator = Process::spawn("coordinator", command, dir.join("coordinator.log"))?;
        wait_for("the coordinator to listen", Duration::from_secs(30), || {
            coordinator.check_running()?;
            Ok(TcpStream::connect(coordinator_addr).is_ok())
        })?;

        let mut processes = Vec::new();
        for spec in agents {
            let home = dir.join("hosts").join(&spec.name);
            let issued = ca.issue_client(&ClientCertRequest {
                name: spec.name.clone(),
                role: Role::Agent,
                validity: Duration::from_secs(24 * 3600),
            })?;
            write_pair(&home, "agent", &issued.cert_pem, issued.key_pem.as_deref())?;
            std::fs::create_dir_all(home.join("root"))?;
            let config = home.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "role = \"{role}\"\nstate_dir = \"{home}/state\"\n\n[coordinator]\naddress = \"{coordinator_addr}\"\n\n\
                     [tls]\nca = \"{pki}/ca.crt\"\ncert = \"{home}/agent.crt\"\nkey = \"{home}/agent.key\"\n\n\
                     [report]\ninterval = \"{report_interval}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
                     [host]\nroot = \"{home}/root\"\n",
                    role = spec.role,
                    home = home.display(),
                    pki = pki.display(),
                ),
            )?;
            let mut command = Command::new(binary("k3sfleet-agent")?);
            command.arg("run").arg("--config").arg(&config);
            processes.push(Process::spawn(
                &format!("agent {}", spec.name),
                command,
                home.join("agent.log"),
            )?);
        }

        let admin = ca.issue_client(&ClientCertRequest {
            name: "demo-admin".into(),
            role: Role::Admin,
            validity: Duration::from_secs(24 * 3600),
        })?;
        write_pair(&pki, "admin", &admin.cert_pem, admin.key_pem.as_deref())?;
        Ok(LocalFleet {
            dir: dir.to_owned(),
            coordinator_addr,
            coordinator,
            agents: processes,
            admin_cert: pki.join("admin.crt"),
            admin_key: pki.join("admin.key"),
        })
    }

    /// The `k3sfleet` CLI, configured for this fleet's admin.
    pub fn cli(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(binary("k3sfleet")?);
        command
            .env("K3SFLEET_COORDINATOR", self.coordinator_addr.to_string())
            .env("K3SFLEET_CA", self.dir.join("pki/ca.crt"))
            .env("K3SFLEET_CERT", &self.admin_cert)
            .env("K3SFLEET_KEY", &self.admin_key);
        Ok(command)
    }

    /// Runs the CLI and returns its standard output.
    pub fn cli_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.cli()?.args(args).output()?;
        if !output.status.success() {
            bail!(
                "k3sfleet {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Waits until every agent holds a session and has reported.
    pub fn wait_connected(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let expected = self.agents.len();
        wait_for("every agent to connect", timeout, || {
            for agent in &mut self.agents {
                agent.check_running()?;
            }
            let nodes: serde_json::Value =
                serde_json::from_str(&self.cli_output(&["nodes", "-o", "json"])?)?;
            let connected = nodes["nodes"].as_array().map_or(0, |nodes| {
                nodes
                    .iter()
                    .filter(|n| {
                        n["connectivity"] == "CONNECTIVITY_CONNECTED"
                            && n.get("lastReportUnixMs").is_some()
                    })
                    .count()
            });
            Ok(connected == expected)
        })
    }

    /// Stops agents, then the coordinator, cleanly.
    pub fn stop(mut self) {
        for agent in &mut self.agents {
            agent.stop();
        }
        self.coordinator.stop();
    }
}

fn write_pair(dir: &Path, name: &str, cert: &str, key: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    k3sfleet_pki::write_public_file(&dir.join(format!("{name}.crt")), cert, true)?;
    if let Some(key) = key {
        k3sfleet_pki::write_private_file(&dir.join(format!("{name}.key")), key, true)?;
    }
    Ok(())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
