//! The coordinator's configuration file (TOML).
//!
//! Every key has a default except the TLS files; unknown keys are errors.
//! See `packaging/config/coordinator.toml` for the documented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k3sfleet_daemon::config::{self, ConfigError};
use serde::Deserialize;

/// Where packages install the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/k3sfleet/coordinator.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address agents and the CLI dial (gRPC over mutual TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Holds the database; created 0700 if missing.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    /// How often received health reports are written to the database.
    #[serde(default = "default_report_flush", with = "k3sfleet_daemon::duration")]
    pub report_flush_interval: Duration,
    /// Access to the cluster's API, for draining nodes. Without it the drain
    /// RPCs answer FAILED_PRECONDITION.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// Prometheus `/metrics` (and `/ready`); off without this section.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// What clients may hold of the accept loop, and how fast callers
    /// without a certificate may call.
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections, agent sessions included; past it a new connection
    /// is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// TLS handshakes in flight at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in flight from one client address; more wait.
    #[serde(default = "default_max_handshakes_per_address")]
    pub max_handshakes_per_address: usize,
    /// A connection that has not completed its handshake this long after it
    /// was accepted (waiting for a slot included) is closed.
    #[serde(
        default = "default_handshake_timeout",
        with = "k3sfleet_daemon::duration"
    )]
    pub handshake_timeout: Duration,
    /// Calls without a client certificate (enrollment, health) one address
    /// may make per second, sustained...
    #[serde(default = "default_anonymous_rate")]
    pub anonymous_calls_per_second: u32,
    /// ...and at once, after a quiet spell.
    #[serde(default = "default_anonymous_burst")]
    pub anonymous_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_address: default_max_handshakes_per_address(),
            handshake_timeout: default_handshake_timeout(),
            anonymous_calls_per_second: default_anonymous_rate(),
            anonymous_burst: default_anonymous_burst(),
        }
    }
}

// Sized for 20,000 agents reconnecting at once after a restart, a few
// thousand of them behind one address.
fn default_max_connections() -> usize {
    50_000
}

fn default_max_handshakes() -> usize {
    4096
}

fn default_max_handshakes_per_address() -> usize {
    512
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_anonymous_rate() -> u32 {
    20
}

fn default_anonymous_burst() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. "0.0.0.0:9465"; port 0 picks a free one, written to
    /// `<data_dir>/metrics-address`.
    pub listen: SocketAddr,
    /// Serve over HTTPS, optionally only to scrapers with a client
    /// certificate; plain HTTP without this section.
    #[serde(default)]
    pub tls: Option<k3sfleet_daemon::metrics_http::MetricsTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file for the cluster (e.g. K3s's /etc/rancher/k3s/k3s.yaml).
    pub kubeconfig: PathBuf,
    /// The kubeconfig context to use [default: its current context].
    #[serde(default)]
    pub context: Option<String>,
    /// How long a drain may take when the request does not say.
    #[serde(default = "default_drain_timeout", with = "k3sfleet_daemon::duration")]
    pub drain_timeout: Duration,
}

fn default_drain_timeout() -> Duration {
    crate::drain::DEFAULT_TIMEOUT
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA certificate: client certificates must chain to it.
    pub ca: PathBuf,
    /// The coordinator's server certificate and key; replaced files are picked
    /// up without a restart.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The fleet CA's private key. With it the coordinator enrolls hosts
    /// with bootstrap tokens and renews certificates; without it both are off.
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// Lifetime of certificates issued to agents (renewed at two thirds).
    #[serde(default = "default_agent_ttl", with = "k3sfleet_daemon::duration")]
    pub agent_cert_ttl: Duration,
    #[serde(default = "default_admin_ttl", with = "k3sfleet_daemon::duration")]
    pub admin_cert_ttl: Duration,
    #[serde(default = "default_agent_ttl", with = "k3sfleet_daemon::duration")]
    pub reader_cert_ttl: Duration,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        EnrollmentConfig {
            agent_cert_ttl: default_agent_ttl(),
            admin_cert_ttl: default_admin_ttl(),
            reader_cert_ttl: default_agent_ttl(),
        }
    }
}

fn default_agent_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_admin_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// K3s release artifacts, laid out as <dir>/<version>/<asset>, streamed to
    /// agents that have no internet access.
    #[serde(default = "default_artifacts_dir")]
    pub dir: PathBuf,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            dir: default_artifacts_dir(),
        }
    }
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:7443".parse().expect("valid address")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/k3sfleet")
}

fn default_artifacts_dir() -> PathBuf {
    PathBuf::from("/var/lib/k3sfleet/artifacts")
}

fn default_report_flush() -> Duration {
    Duration::from_secs(5)
}

impl CoordinatorConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: CoordinatorConfig = config::load(path)?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.report_flush_interval.is_zero() {
            return Err(config::invalid(
                path,
                "report_flush_interval",
                "must be greater than zero",
            ));
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.max_connections", limits.max_connections),
            ("limits.max_handshakes", limits.max_handshakes),
            (
                "limits.max_handshakes_per_address",
                limits.max_handshakes_per_address,
            ),
            (
                "limits.anonymous_calls_per_second",
                limits.anonymous_calls_per_second as usize,
            ),
            ("limits.anonymous_burst", limits.anonymous_burst as usize),
        ] {
            if value == 0 {
                return Err(config::invalid(path, key, "must be greater than zero"));
            }
        }
        if limits.handshake_timeout < Duration::from_secs(1) {
            return Err(config::invalid(
                path,
                "limits.handshake_timeout",
                "must be at least 1s",
            ));
        }
        let enrollment = &self.enrollment;
        for (key, ttl) in [
            ("enrollment.agent_cert_ttl", enrollment.agent_cert_ttl),
            ("enrollment.admin_cert_ttl", enrollment.admin_cert_ttl),
            ("enrollment.reader_cert_ttl", enrollment.reader_cert_ttl),
        ] {
            if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(365 * 24 * 3600) {
                return Err(config::invalid(path, key, "must be between 1m and 365d"));
            }
        }
        if let Some(kubernetes) = &self.kubernetes {
            if !kubernetes.kubeconfig.is_file() {
                return Err(config::invalid(
                    path,
                    "kubernetes.kubeconfig",
                    format!(
                        "{} does not exist or is not a file",
                        kubernetes.kubeconfig.display()
                    ),
                ));
            }
            if kubernetes.drain_timeout.is_zero() {
                return Err(config::invalid(
                    path,
                    "kubernetes.drain_timeout",
                    "must be greater than zero",
                ));
            }
        }
        let mut files = vec![
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ];
        if let Some(ca_key) = &self.tls.ca_key {
            files.push(("tls.ca_key", ca_key));
        }
        for (key, file) in files {
            if !file.is_file() {
                return Err(config::invalid(
                    path,
                    key,
                    format!("{} does not exist or is not a file", file.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordinatorConfig, ConfigError> {
        config::parse(Path::new("coordinator.toml"), text)
    }

    #[test]
    fn defaults_fill_everything_but_tls() {
        let config = parse("[tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n").unwrap();
        assert_eq!(config.listen.port(), 7443);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/k3sfleet"));
        assert_eq!(config.report_flush_interval, Duration::from_secs(5));
        assert!(config.kubernetes.is_none());
    }

    #[test]
    fn the_kubernetes_section_needs_a_kubeconfig_that_exists() {
        let tls = "[tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n";
        let err = parse(&format!("{tls}[kubernetes]\ncontext = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubeconfig"), "{err}");

        let config = parse(&format!(
            "{tls}[kubernetes]\nkubeconfig = \"/nonexistent/k3s.yaml\"\ndrain_timeout = \"2m\"\n"
        ))
        .unwrap();
        let kubernetes = config.kubernetes.as_ref().unwrap();
        assert_eq!(kubernetes.drain_timeout, Duration::from_secs(120));
        assert_eq!(kubernetes.context, None);
        let err = config
            .validate(Path::new("coordinator.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kubernetes.kubeconfig") && err.contains("/nonexistent/k3s.yaml"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("listen = \"nope\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        let err = parse("[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nkye = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kye"), "{err}");
        let err = parse("").unwrap_err().to_string();
        assert!(err.contains("tls"), "{err}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&format!(
            "[tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/c.crt\"\nkey = \"{0}/c.key\"\n",
            dir.path().display()
        ))
        .unwrap();
        let err = config
            .validate(Path::new("coordinator.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.ca") && err.contains("ca.crt"), "{err}");
    }
}
