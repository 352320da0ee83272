//! Headscale, the tailnet's control server, on one host of the lab network:
//! its configuration (no embedded DERP, no update checks, a DERP map with one
//! placeholder region on loopback, a policy that owns the fleet's tags), the
//! process, and the admin CLI over its unix socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::netns::NetHost;
use crate::process::Process;

/// Where Headscale's HTTP(S) API listens on its host.
pub const HEADSCALE_PORT: u16 = 8080;
/// The one user keys and nodes belong to.
const USER: &str = "fleet";
/// The tailnet's MagicDNS domain: a node's DNS name is `<name>.<domain>`.
pub const BASE_DOMAIN: &str = "fleet.test";
/// Tags the policy lets the fleet's keys carry.
pub const FLEET_TAGS: [&str; 4] = ["tag:k3s", "tag:server", "tag:worker", "tag:coordinator"];

/// The running control server.
#[derive(Debug)]
pub struct Headscale {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    host: NetHost,
    pub process: Process,
    user_id: u64,
}

/// A pre-auth key as Headscale made it.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyOptions<'a> {
    pub reusable: bool,
    /// Nodes joining with it get these tags (Headscale refuses requested
    /// tags on pre-auth key registrations: the key carries them).
    pub tags: &'a [&'a str],
}

#[derive(Debug, Clone)]
pub struct PreAuthKey {
    pub id: u64,
    pub key: String,
}

/// A node in `headscale nodes list -o json` (the fields tests look at).
#[derive(Debug, Clone, Deserialize)]
pub struct HeadscaleNode {
    #[serde(default)]
    pub id: u64,
    /// The hostname the node asked for.
    #[serde(default)]
    pub name: String,
    /// Its MagicDNS name within [`BASE_DOMAIN`].
    #[serde(default)]
    pub given_name: String,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub online: bool,
}

impl Headscale {
    /// The login server URL nodes use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.address.into(), HEADSCALE_PORT)
    }

    /// Writes the configuration under `dir` and starts Headscale in `host`.
    pub fn start(binary: &Path, dir: &Path, host: &NetHost) -> anyhow::Result<Headscale> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.yaml");
        std::fs::write(dir.join("derp.yaml"), DERP_MAP)?;
        std::fs::write(dir.join("policy.hujson"), policy())?;
        std::fs::write(&config, config_yaml(dir, host))?;
        let mut headscale = Headscale {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            config,
            host: host.clone(),
            process: Process::placeholder("headscale"),
            user_id: 0,
        };
        headscale.resume()?;
        let created = headscale.cli_ok(&["users", "create", USER, "-o", "json"])?;
        headscale.user_id = serde_json::from_str::<serde_json::Value>(&created)?["id"]
            .as_u64()
            .with_context(|| format!("no user id in {created}"))?;
        Ok(headscale)
    }

    /// Stops it (SIGTERM): the control server is down; its state stays.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same state; returns once it answers.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let mut command = self.host.command(&self.binary);
        command.arg("serve").arg("--config").arg(&self.config);
        self.process = Process::spawn("headscale", command, &self.dir.join("headscale.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.host.connect(self.addr()).is_err() || !self.socket().exists() {
            self.process.check_running()?;
            if Instant::now() >= deadline {
                bail!("headscale did not listen on {} within 30s", self.addr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("headscale.sock")
    }

    /// The admin CLI (over the unix socket, so from this machine).
    pub fn cli(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--config").arg(&self.config);
        command
    }

    fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.cli().args(args).output()?;
        if !output.status.success() {
            bail!(
                "headscale {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A new pre-auth key, valid for an hour.
    pub fn create_key(&self, options: KeyOptions<'_>) -> anyhow::Result<PreAuthKey> {
        let user = self.user_id.to_string();
        let tags = options.tags.join(",");
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            &user,
            "--expiration",
            "1h",
            "-o",
            "json",
        ];
        if options.reusable {
            args.push("--reusable");
        }
        if !tags.is_empty() {
            args.extend(["--tags", &tags]);
        }
        let created: serde_json::Value = serde_json::from_str(&self.cli_ok(&args)?)?;
        Ok(PreAuthKey {
            id: created["id"].as_u64().context("no key id")?,
            key: created["key"].as_str().context("no key")?.to_string(),
        })
    }

    /// Expires a key now (`headscale preauthkeys expire`).
    pub fn expire_key(&self, key: &PreAuthKey) -> anyhow::Result<()> {
        self.cli_ok(&["preauthkeys", "expire", "--id", &key.id.to_string()])?;
        Ok(())
    }

    /// `headscale nodes list`.
    pub fn nodes(&self) -> anyhow::Result<Vec<HeadscaleNode>> {
        let text = self.cli_ok(&["nodes", "list", "-o", "json"])?;
        // An empty list prints as `null`.
        Ok(serde_json::from_str::<Option<Vec<HeadscaleNode>>>(&text)
            .with_context(|| format!("parsing `headscale nodes list -o json`: {text}"))?
            .unwrap_or_default())
    }

    pub fn node(&self, name: &str) -> anyhow::Result<Option<HeadscaleNode>> {
        Ok(self.nodes()?.into_iter().find(|n| n.name == name))
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// One region whose only node is on each host's own loopback with STUN off:
/// Headscale needs a DERP map, and tailscaled, trying its home relay, only
/// ever dials 127.0.0.1 of its own namespace (nothing listens there).
const DERP_MAP: &str = "\
regions:
  900:
    regionid: 900
    regioncode: none
    regionname: placeholder (no relay in the test world)
    nodes:
      - name: 900a
        regionid: 900
        hostname: placeholder.invalid
        ipv4: 127.0.0.1
        ipv6: none
        stunport: -1
        derpport: 9
";

/// Every fleet tag owned by the fleet's user; every node may reach every
/// other (the lab is one trust domain).
fn policy() -> String {
    let owners: Vec<String> = FLEET_TAGS
        .iter()
        .map(|tag| format!("    \"{tag}\": [\"{USER}@\"]"))
        .collect();
    format!(
        "{{\n  \"tagOwners\": {{\n{}\n  }},\n  \"acls\": [{{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}}]\n}}\n",
        owners.join(",\n")
    )
}

fn config_yaml(dir: &Path, host: &NetHost) -> String {
    let dir = dir.display();
    let address = host.address;
    format!(
        "\
server_url: http://{address}:{HEADSCALE_PORT}
listen_addr: {address}:{HEADSCALE_PORT}
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: {dir}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []
  paths:
    - {dir}/derp.yaml
  auto_update_enabled: false
disable_check_updates: true
node:
  expiry: 90d
database:
  type: sqlite
  sqlite:
    path: {dir}/db.sqlite
    write_ahead_log: true
log:
  level: info
policy:
  mode: file
  path: {dir}/policy.hujson
dns:
  magic_dns: true
  base_domain: {BASE_DOMAIN}
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {dir}/headscale.sock
unix_socket_permission: \"0770\"
logtail:
  enabled: false
"
    )
}
