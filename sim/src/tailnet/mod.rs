//! A real tailnet in the lab's network namespaces: Headscale (built from
//! testbed/headscale) as the control server on one host, tailscaled (from
//! testbed/tailscale) on the others, and the glue that hands a lab host's
//! Tailscale over to its real agent.
//!
//! Nothing leaves the test world: the namespaces have no default route (each
//! daemon checks before it starts), Headscale runs no DERP server and checks
//! for no updates, its DERP map's one region sits on each host's own
//! loopback, and tailscaled uploads no logs and maps no ports (see
//! [`tailscaled`]). Hosts on the one lab network then talk directly.

pub mod headscale;
pub mod tailscaled;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use self::headscale::{Headscale, HeadscaleNode, KeyOptions, PreAuthKey};
pub use self::tailscaled::Tailscaled;
use crate::lab::{Lab, LabHost};
use crate::netns::NetHost;

/// The binaries scripts/build-testbed.sh builds for the tailnet.
#[derive(Debug, Clone)]
pub struct TailnetBinaries {
    pub tailscale: PathBuf,
    pub tailscaled: PathBuf,
    pub headscale: PathBuf,
}

impl TailnetBinaries {
    /// As scripts/build-testbed.sh builds them; says which is missing.
    pub fn locate() -> Result<TailnetBinaries, String> {
        let find = |name: &str| crate::testbed::binary(name, "tailscale headscale");
        Ok(TailnetBinaries {
            tailscale: find("tailscale")?,
            tailscaled: find("tailscaled")?,
            headscale: find("headscale")?,
        })
    }
}

/// Why a tailnet cannot run here, or `None` if it can.
pub fn unavailable_reason() -> Option<String> {
    if let Some(reason) = crate::netns::unavailable_reason() {
        return Some(reason);
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("tailscaled needs /dev/net/tun".into());
    }
    TailnetBinaries::locate().err()
}

/// Headscale and the tailscaled of every member host, by host name.
#[derive(Debug)]
pub struct Tailnet {
    pub binaries: TailnetBinaries,
    /// Dropped first: every daemon ends before the control server.
    daemons: BTreeMap<String, Tailscaled>,
    pub headscale: Headscale,
    dir: PathBuf,
}

impl Tailnet {
    /// Headscale on `control`, tailscaled on each of `members` (logged
    /// out), all under `dir`.
    pub fn start(dir: &Path, control: &NetHost, members: &[&NetHost]) -> anyhow::Result<Tailnet> {
        let binaries = TailnetBinaries::locate().map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let headscale = Headscale::start(&binaries.headscale, &dir.join("headscale"), control)?;
        let mut daemons = BTreeMap::new();
        for host in members {
            let daemon = Tailscaled::start(
                &binaries.tailscaled,
                &binaries.tailscale,
                &dir.join("tailscaled").join(&host.name),
                host,
            )?;
            daemons.insert(host.name.clone(), daemon);
        }
        eprintln!(
            "tailnet: headscale and {} tailscaled up in {:.1}s",
            daemons.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(Tailnet {
            binaries,
            daemons,
            headscale,
            dir: dir.to_owned(),
        })
    }

    /// The lab's tailnet: Headscale on the coordinator's host, tailscaled
    /// there and on every node (the lab must run in namespaces).
    pub fn for_lab(lab: &Lab) -> anyhow::Result<Tailnet> {
        let control = lab
            .coordinator_netns()
            .context("a tailnet needs a lab in network namespaces (Network::Namespaces)")?;
        let mut members = vec![control];
        members.extend(lab.hosts.iter().filter_map(|h| h.netns.as_ref()));
        Tailnet::start(&lab.dir.join("tailnet"), control, &members)
    }

    pub fn daemon(&self, host: &str) -> &Tailscaled {
        self.daemons
            .get(host)
            .unwrap_or_else(|| panic!("no tailscaled on {host}"))
    }

    pub fn daemons(&self) -> impl Iterator<Item = &Tailscaled> {
        self.daemons.values()
    }

    /// `key` in a fresh 0600 file under the tailnet's directory.
    pub fn key_file(&self, name: &str, key: &PreAuthKey) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(file, "{}", key.key)?;
        Ok(path)
    }

    /// Enrolls `host` with the CLI directly (a host no agent manages).
    pub fn enroll_directly(&self, host: &str, key: &PreAuthKey) -> anyhow::Result<String> {
        let file = self.key_file(&format!("direct-{host}"), key)?;
        self.daemon(host).up(&self.headscale.url(), &file, host)?;
        std::fs::remove_file(&file)?;
        self.wait_for_ipv4(host, Duration::from_secs(30))
    }

    /// Waits until `host` has a tailnet IPv4 address; returns it.
    pub fn wait_for_ipv4(&self, host: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ip) = self.daemon(host).ipv4()? {
                return Ok(ip);
            }
            if Instant::now() >= deadline {
                bail!("{host} has no tailnet address after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `tailscale ping --tsmp` from `from` to `ip` until a pong: a ping
    /// through WireGuard itself, so the data path is up (a peer's first
    /// handshake can be dropped while tailscaled configures it lazily, and
    /// WireGuard retries only after 5 s); returns how long it took.
    pub fn ping(&self, from: &str, ip: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let output = self
                .daemon(from)
                .cli()
                .args(["ping", "--tsmp", "--c=1", "--timeout=2s", ip])
                .output()?;
            if output.status.success() {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                bail!(
                    "{from} got no pong from {ip} within {timeout:?}: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }

    /// Hands `host`'s Tailscale to its agent: the stand-in CLI becomes the
    /// real one, the agent's config gets a `[host.tailscale]` section with
    /// this host's socket and `settings` (more keys of that section, then
    /// any subtables), and the agent restarts on it. Calling it again
    /// replaces the section.
    pub fn manage_with_agent(&self, host: &mut LabHost, settings: &str) -> anyhow::Result<()> {
        let daemon = self.daemon(&host.name);
        let cli = host.host.tool("tailscale");
        let _ = std::fs::remove_file(&cli);
        std::os::unix::fs::symlink(&self.binaries.tailscale, &cli)
            .with_context(|| format!("linking {}", cli.display()))?;
        let original = host.config.with_extension("toml.lab");
        if !original.exists() {
            std::fs::copy(&host.config, &original)?;
        }
        let mut config = std::fs::read_to_string(&original)?;
        config.push_str(&format!(
            "\n[host.tailscale]\nsocket = {:?}\n{settings}\n",
            daemon.socket.display().to_string()
        ));
        std::fs::write(&host.config, config)?;
        host.restart_agent()
    }
}
