//! The agent's configuration file (TOML).
//!
//! Only the coordinator address and the TLS files are required; everything
//! else has a default that fits a standard K3s host. Unknown keys are errors.
//! See `packaging/agent.toml` for the documented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k3sfleet_daemon::config::{self, ConfigError};
use k3sfleet_daemon::metrics_http::MetricsTls;
use serde::Deserialize;

use crate::host::HostConfig;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/k3sfleet/agent.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What K3s runs here: "server" (control plane, etcd) or "agent" (worker).
    pub role: K3sRole,
    /// The node's name; must equal the CommonName of the agent's certificate.
    /// Defaults to that CommonName.
    #[serde(default)]
    pub node_name: Option<String>,
    pub coordinator: CoordinatorConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub report: ReportConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where the agent keeps its own state (the command journal).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub host: HostConfig,
}

/// "server" or "agent" in the config; the same role enrollment binds into
/// the host's certificate.
pub use k3sfleet_pki::K3sRole;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// HOST:PORT of the coordinator.
    pub address: String,
    /// The name to verify in the coordinator's certificate; defaults to the
    /// address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Upper bound of the wait between reconnection attempts.
    #[serde(default = "default_max_backoff", with = "k3sfleet_daemon::duration")]
    pub max_reconnect_delay: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// How often to send a health report (also sent at once on a change).
    #[serde(default = "default_interval", with = "k3sfleet_daemon::duration")]
    pub interval: Duration,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            interval: default_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus /metrics endpoint; "off" is not an address,
    /// so to disable it set `enabled = false`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Serve over HTTPS, optionally only to scrapers with a client
    /// certificate; plain HTTP without this section.
    #[serde(default)]
    pub tls: Option<MetricsTls>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            enabled: true,
            tls: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/k3sfleet/agent")
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_metrics_listen() -> SocketAddr {
    "0.0.0.0:9464".parse().expect("valid address")
}

fn default_true() -> bool {
    true
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load_settings(path)?;
        config.validate_tls_files(path)?;
        Ok(config)
    }

    /// Loads and checks everything but the TLS files, which `enroll` creates.
    pub fn load_settings(path: &Path) -> Result<Self, ConfigError> {
        let config: AgentConfig = config::load(path)?;
        config.validate_settings(path)?;
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_settings(path)?;
        self.validate_tls_files(path)
    }

    fn validate_tls_files(&self, path: &Path) -> Result<(), ConfigError> {
        for (key, file) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if !file.is_file() {
                return Err(config::invalid(
                    path,
                    key,
                    format!(
                        "{} does not exist or is not a file (enroll the host first: k3sfleet-agent enroll --help)",
                        file.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_settings(&self, path: &Path) -> Result<(), ConfigError> {
        if self.report.interval < Duration::from_millis(100) {
            return Err(config::invalid(
                path,
                "report.interval",
                "must be at least 100ms",
            ));
        }
        if self.coordinator.max_reconnect_delay < Duration::from_secs(1) {
            return Err(config::invalid(
                path,
                "coordinator.max_reconnect_delay",
                "must be at least 1s",
            ));
        }
        if !self.coordinator.address.contains(':') {
            return Err(config::invalid(
                path,
                "coordinator.address",
                "expected HOST:PORT",
            ));
        }
        self.host.validate(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        config::parse(Path::new("agent.toml"), text)
    }

    const MINIMAL: &str = r#"
role = "agent"
[coordinator]
address = "coordinator.example:7443"
[tls]
ca = "ca.crt"
cert = "node.crt"
key = "node.key"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.role, K3sRole::Agent);
        assert_eq!(config.report.interval, Duration::from_secs(15));
        assert_eq!(config.metrics.listen.port(), 9464);
        assert_eq!(config.host.root, PathBuf::from("/"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse(&MINIMAL.replace("\"agent\"", "\"worker\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("role") || err.contains("worker"), "{err}");
        let err = parse(&format!("{MINIMAL}[report]\ninterval = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval") && err.contains("soon"), "{err}");
        let err = parse(&format!("{MINIMAL}[reports]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reports"), "{err}");
    }
}
