//! Finding the coordinator and the operator's credentials.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use k3sfleet_pki::{DialTarget, FixedClientCert};
use serde::Deserialize;
use tonic::transport::Channel;

/// Connection flags, shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// CLI config file [default: ~/.config/k3sfleet/config.toml, then /etc/k3sfleet/cli.toml]
    #[arg(long, env = "K3SFLEET_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Coordinator address
    #[arg(
        long,
        env = "K3SFLEET_COORDINATOR",
        global = true,
        value_name = "HOST:PORT"
    )]
    pub coordinator: Option<String>,
    /// Fleet CA certificate that signed the coordinator's certificate
    #[arg(long, env = "K3SFLEET_CA", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (role admin or reader)
    #[arg(long, env = "K3SFLEET_CERT", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of your client certificate
    #[arg(long, env = "K3SFLEET_KEY", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Name to verify in the coordinator's certificate [default: the address's host]
    #[arg(long, env = "K3SFLEET_SERVER_NAME", global = true, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// The CLI config file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    pub coordinator: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// Everything needed to connect, after merging flags, environment and file.
#[derive(Debug)]
pub struct Resolved {
    pub coordinator: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: Option<String>,
}

impl Resolved {
    pub fn target(&self) -> DialTarget {
        let mut target = DialTarget::new(self.coordinator.clone());
        target.server_name = self.server_name.clone();
        target
    }
}

impl ConnectionArgs {
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let (file, source) = self.load_file()?;
        let missing = |flag: &str, key: &str| {
            let hint = match &source {
                Some(path) => format!("not set in {}", path.display()),
                None => "and no config file was found".to_string(),
            };
            anyhow::anyhow!(
                "the {key} is not configured: pass --{flag} or set K3SFLEET_{} ({hint})",
                flag.to_uppercase().replace('-', "_")
            )
        };
        Ok(Resolved {
            coordinator: self
                .coordinator
                .clone()
                .or(file.coordinator)
                .ok_or_else(|| missing("coordinator", "coordinator address"))?,
            ca: self
                .ca
                .clone()
                .or(file.ca)
                .ok_or_else(|| missing("ca", "fleet CA certificate"))?,
            cert: self
                .cert
                .clone()
                .or(file.cert)
                .ok_or_else(|| missing("cert", "client certificate"))?,
            key: self
                .key
                .clone()
                .or(file.key)
                .ok_or_else(|| missing("key", "client key"))?,
            server_name: self.server_name.clone().or(file.server_name),
        })
    }

    fn load_file(&self) -> anyhow::Result<(CliConfig, Option<PathBuf>)> {
        if let Some(path) = &self.config {
            return Ok((k3sfleet_daemon::config::load(path)?, Some(path.clone())));
        }
        for candidate in default_config_paths() {
            if candidate.is_file() {
                return Ok((k3sfleet_daemon::config::load(&candidate)?, Some(candidate)));
            }
        }
        Ok((CliConfig::default(), None))
    }

    /// Opens a channel to the coordinator with the operator's certificate.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let resolved = self.resolve()?;
        let roots = k3sfleet_pki::root_store(&resolved.ca)?;
        let identity = k3sfleet_pki::certified_key(&resolved.cert, &resolved.key)?;
        let tls = k3sfleet_pki::client_config(roots, Some(Arc::new(FixedClientCert(identity))));
        let channel = k3sfleet_pki::dial(&resolved.target(), Arc::new(tls))
            .await
            .with_context(|| describe_credentials(&resolved.cert))?;
        Ok(channel)
    }
}

fn describe_credentials(cert: &Path) -> String {
    format!("connecting with the certificate {}", cert.display())
}

fn default_config_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        paths.push(PathBuf::from(dir).join("k3sfleet/config.toml"));
    } else if let Some(home) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(home).join(".config/k3sfleet/config.toml"));
    }
    paths.push(PathBuf::from("/etc/k3sfleet/cli.toml"));
    paths
}
