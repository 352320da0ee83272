//! Real k3sfleet processes for tests: started from the build, logs kept in
//! the test's directory and printed if the test fails, killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pki::{CertFiles, TestPki};
use crate::wait::wait_until;

/// A binary of this workspace, from the target directory the tests run from.
pub fn bin(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (scripts/test.sh does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound, then released for the process to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when dropped, and whose log is printed when
/// the test that owns it panics.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Daemon {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// Sends SIGTERM and waits for a clean exit; returns its status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not stop within 10s of SIGTERM", self.name);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has exited, and with what code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|status| status.code())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "----- last lines of {} ({}) -----",
                self.name,
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A coordinator process with its own data directory.
pub struct CoordinatorProcess {
    pub daemon: Daemon,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

impl CoordinatorProcess {
    /// Writes a config into `dir` and starts the coordinator; returns once it accepts connections.
    pub fn start(dir: &Path, pki: &TestPki, extra_config: &str) -> CoordinatorProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data_dir = dir.join("coordinator-data");
        let server = pki.server();
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndata_dir = \"{}\"\nreport_flush_interval = \"200ms\"\n{extra_config}\n\
                 [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nca_key = \"{}\"\n",
                data_dir.display(),
                pki.ca_cert().display(),
                server.cert.display(),
                server.key.display(),
                pki.dir.join("ca.key").display()
            ),
        )
        .unwrap();
        CoordinatorProcess {
            daemon: spawn_coordinator(&config, addr, &dir.join("coordinator.log")),
            addr,
            config,
            data_dir,
        }
    }

    /// Kills (-9) and starts it again on the same address and data directory.
    pub fn restart_after_kill(&mut self) {
        self.daemon.kill();
        self.daemon = spawn_coordinator(&self.config, self.addr, &self.daemon.log);
    }

    /// Stops it with SIGTERM and starts it again.
    pub fn restart(&mut self) {
        assert_eq!(
            self.daemon.stop(),
            Some(0),
            "the coordinator should exit cleanly on SIGTERM"
        );
        self.daemon = spawn_coordinator(&self.config, self.addr, &self.daemon.log);
    }
}

/// Starts a coordinator and waits until it accepts connections.
fn spawn_coordinator(config: &Path, addr: SocketAddr, log: &Path) -> Daemon {
    let mut command = Command::new(bin("k3sfleet-coordinator"));
    command.arg("run").arg("--config").arg(config);
    let mut daemon = Daemon::spawn("coordinator", command, log.to_owned());
    wait_until("the coordinator to listen", Duration::from_secs(30), || {
        if let Some(code) = daemon.exited() {
            panic!(
                "the coordinator exited early with {code:?}:\n{}",
                daemon.log()
            );
        }
        std::net::TcpStream::connect(addr).is_ok()
    });
    daemon
}

/// An agent's directory: config, TLS files, state and host root. The
/// certificate files may not exist yet (for enrollment tests).
#[derive(Debug, Clone)]
pub struct AgentHome {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tls: CertFiles,
    pub ca: PathBuf,
    pub host_root: PathBuf,
    pub state_dir: PathBuf,
}

impl AgentHome {
    /// Writes the agent's config into `<dir>/agent-<name>/`.
    pub fn create(dir: &Path, coordinator: SocketAddr, spec: &AgentSpec<'_>) -> AgentHome {
        let home = dir.join(format!("agent-{}", spec.name));
        let host_root = home.join("host");
        let state_dir = home.join("state");
        std::fs::create_dir_all(&host_root).unwrap();
        let tls = CertFiles {
            cert: home.join("pki/agent.crt"),
            key: home.join("pki/agent.key"),
        };
        let ca = home.join("pki/ca.crt");
        let config = home.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"{role}\"\nstate_dir = \"{state}\"\n\n\
                 [coordinator]\naddress = \"{coordinator}\"\nmax_reconnect_delay = \"2s\"\n\n\
                 [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [report]\ninterval = \"{interval}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
                 [host]\nroot = \"{root}\"\n\n{extra}\n",
                role = spec.role,
                state = state_dir.display(),
                ca = ca.display(),
                cert = tls.cert.display(),
                key = tls.key.display(),
                interval = spec.report_interval,
                root = host_root.display(),
                extra = spec.extra_config,
            ),
        )
        .unwrap();
        AgentHome {
            name: spec.name.to_string(),
            dir: home,
            config,
            tls,
            ca,
            host_root,
            state_dir,
        }
    }

    /// Puts a certificate issued directly by the test CA in place.
    pub fn install_certificate(&self, pki: &TestPki) {
        let issued = pki.issue(k3sfleet_pki::Role::Agent, &self.name);
        std::fs::create_dir_all(self.tls.cert.parent().unwrap()).unwrap();
        std::fs::copy(&issued.cert, &self.tls.cert).unwrap();
        std::fs::copy(&issued.key, &self.tls.key).unwrap();
        std::fs::copy(pki.ca_cert(), &self.ca).unwrap();
    }
}

/// An agent process.
pub struct AgentProcess {
    pub daemon: Daemon,
    pub home: AgentHome,
}

/// How to configure a test agent.
pub struct AgentSpec<'a> {
    pub name: &'a str,
    /// "server" or "agent".
    pub role: &'a str,
    pub report_interval: &'a str,
    /// Appended to the config file verbatim (extra sections).
    pub extra_config: String,
}

impl<'a> AgentSpec<'a> {
    pub fn new(name: &'a str, role: &'a str) -> Self {
        AgentSpec {
            name,
            role,
            report_interval: "300ms",
            extra_config: String::new(),
        }
    }
}

impl AgentProcess {
    /// Creates the agent's home with a certificate from the test CA and starts it.
    pub fn start(
        dir: &Path,
        pki: &TestPki,
        coordinator: SocketAddr,
        spec: AgentSpec<'_>,
    ) -> AgentProcess {
        let home = AgentHome::create(dir, coordinator, &spec);
        home.install_certificate(pki);
        AgentProcess::spawn(home)
    }

    /// Starts an agent from an existing home.
    pub fn spawn(home: AgentHome) -> AgentProcess {
        let mut command = Command::new(bin("k3sfleet-agent"));
        command.arg("run").arg("--config").arg(&home.config);
        AgentProcess {
            daemon: Daemon::spawn(
                &format!("agent {}", home.name),
                command,
                home.dir.join("agent.log"),
            ),
            home,
        }
    }

    /// Starts the same agent again after it stopped or was killed.
    pub fn restart(&mut self) {
        self.daemon.kill();
        let mut command = Command::new(bin("k3sfleet-agent"));
        command.arg("run").arg("--config").arg(&self.home.config);
        let log = self.daemon.log.clone();
        self.daemon = Daemon::spawn(&self.daemon.name.clone(), command, log);
    }
}
/// The `k3sfleet` CLI with a given identity.
pub struct Cli {
    pub coordinator: SocketAddr,
    pub ca: PathBuf,
    pub identity: CertFiles,
}

impl Cli {
    pub fn new(pki: &TestPki, coordinator: SocketAddr, identity: CertFiles) -> Cli {
        Cli {
            coordinator,
            ca: pki.ca_cert(),
            identity,
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(bin("k3sfleet"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("K3SFLEET_COORDINATOR", self.coordinator.to_string())
            .env("K3SFLEET_CA", &self.ca)
            .env("K3SFLEET_CERT", &self.identity.cert)
            .env("K3SFLEET_KEY", &self.identity.key);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("running k3sfleet")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "k3sfleet {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `k3sfleet nodes -o json`, parsed.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let text = self.ok(&["nodes", "-o", "json"]);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// The node named `name` from `nodes -o json`, if listed.
    pub fn node(&self, name: &str) -> Option<serde_json::Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }
}
