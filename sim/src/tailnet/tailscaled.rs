//! tailscaled in one host's namespace, kept from reaching anything outside
//! the test world: its own state directory and socket, TUN mode (it runs as
//! root; routes and firewall rules stay in the namespace), no log uploads,
//! no port mapping, a proxy on a dead loopback port for any HTTP it might
//! try beyond the lab network, and its own /etc/resolv.conf so its DNS
//! manager can never touch the machine's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::NetHost;
use crate::process::Process;

/// The lab network: the only addresses tailscaled may reach directly.
const LAB_NETWORK: &str = "10.77.0.0/24";
/// Nothing listens on port 9 (discard) of a namespace's loopback.
const DEAD_END: &str = "http://127.0.0.1:9";
/// Where `ip netns exec` takes a namespace's own /etc files from.
const NETNS_ETC: &str = "/etc/netns";

#[derive(Debug)]
pub struct Tailscaled {
    pub host: NetHost,
    pub socket: PathBuf,
    dir: PathBuf,
    tailscale: PathBuf,
    pub process: Process,
    /// /etc/netns/<namespace>, removed on drop.
    etc: PathBuf,
}

impl Tailscaled {
    /// Starts tailscaled in `host`; returns once its socket answers.
    pub fn start(
        tailscaled: &Path,
        tailscale: &Path,
        dir: &Path,
        host: &NetHost,
    ) -> anyhow::Result<Tailscaled> {
        refuse_default_route(host)?;
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let etc = Path::new(NETNS_ETC).join(&host.netns);
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        std::fs::write(
            etc.join("resolv.conf"),
            "# a lab namespace: no name servers\n",
        )?;
        let socket = dir.join("tailscaled.sock");
        let mut command = host.command(tailscaled);
        command
            .arg(format!("--statedir={}", dir.join("state").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg("--port=41641")
            .arg("--no-logs-no-support")
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_LOGS_DIR", dir.join("logs"))
            .env("TS_DISABLE_PORTMAPPER", "1")
            .env("TS_PANIC_IF_HIT_MAIN_CONTROL", "1")
            .env(
                "TS_NETCHECK_GENERATE_204_URL",
                format!("{DEAD_END}/generate_204"),
            )
            .env("HTTP_PROXY", DEAD_END)
            .env("HTTPS_PROXY", DEAD_END)
            .env("NO_PROXY", LAB_NETWORK);
        let process = Process::spawn(
            &format!("tailscaled {}", host.name),
            command,
            &dir.join("tailscaled.log"),
        )?;
        let mut daemon = Tailscaled {
            host: host.clone(),
            socket,
            dir: dir.to_owned(),
            tailscale: tailscale.to_owned(),
            process,
            etc,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.answers() {
            daemon.process.check_running()?;
            if Instant::now() >= deadline {
                bail!("tailscaled on {} did not answer within 30s", host.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }

    fn answers(&self) -> bool {
        self.cli()
            .args(["status", "--json", "--peers=false"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    }

    /// The `tailscale` CLI for this daemon, run in its namespace.
    pub fn cli(&self) -> Command {
        let mut command = self.host.command(&self.tailscale);
        command.arg(format!("--socket={}", self.socket.display()));
        command
    }

    /// `tailscale status --json` (with peers).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.cli().args(["status", "--json"]).output()?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "tailscale status on {}: {}",
                self.host.name,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// The node's first tailnet IPv4 address, once it has one.
    pub fn ipv4(&self) -> anyhow::Result<Option<String>> {
        let status = self.status()?;
        Ok(status["Self"]["TailscaleIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str())
            .find(|ip| ip.contains('.'))
            .map(str::to_string))
    }

    /// Enrolls directly with the CLI (for hosts no agent manages).
    pub fn up(&self, login_server: &str, key_file: &Path, hostname: &str) -> anyhow::Result<()> {
        let output = self
            .cli()
            .arg("up")
            .arg(format!("--login-server={login_server}"))
            .arg(format!("--auth-key=file:{}", key_file.display()))
            .arg(format!("--hostname={hostname}"))
            .args(["--accept-dns=false", "--timeout=30s"])
            .output()?;
        if !output.status.success() {
            bail!(
                "tailscale up on {} failed: {}",
                self.host.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        // SIGTERM lets it remove its routes and firewall rules; the
        // namespace goes after it anyway.
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// Nothing here may try the internet: a namespace with a default route is
/// not one this harness made.
fn refuse_default_route(host: &NetHost) -> anyhow::Result<()> {
    for family in ["-4", "-6"] {
        let output = Command::new("ip")
            .args([family, "-n", &host.netns, "route", "show", "default"])
            .output()
            .context("running ip (apt package iproute2)")?;
        let routes = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !routes.trim().is_empty() {
            bail!(
                "{} has a default route ({}): tailscaled runs only where nothing leads out of the lab",
                host.netns,
                routes.trim()
            );
        }
    }
    Ok(())
}
