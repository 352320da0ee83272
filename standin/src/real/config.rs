//! A real-tier host's configuration (`.standin/k3s-real.toml`), written by
//! the lab: which node this host is, where the testbed binaries are, what
//! its kubelet (KWOK) talks to and, on servers, the etcd cluster it belongs
//! to. Certificates and keys are never in it: they are files at K3s's paths
//! ([`super::K3sLayout`]), 0600 where secret.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealHostConfig {
    /// The Kubernetes node name.
    pub node: String,
    /// The host's address on the lab network.
    pub address: Ipv4Addr,
    /// Where `etcd`, `etcdctl`, `kube-apiserver`, ..., `kwok` are.
    pub bin_dir: PathBuf,
    /// KWOK's Stage objects (testbed/kwok/stages.yaml).
    pub kwok_stages: PathBuf,
    /// The API server URL this host's kubelet uses: its own API server on a
    /// server, the registration address (the load balancer) on an agent.
    pub api_url: String,
    /// Pod IPs KWOK hands out on this node.
    pub pod_cidr: String,
    /// Labels the kubelet registers the node with, if it registers it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How long KWOK's node lease lasts (it renews every quarter of it).
    #[serde(default = "default_lease_seconds")]
    pub node_lease_seconds: u32,
    /// KWOK's log level (DEBUG, INFO, WARN, ERROR).
    #[serde(default = "default_kwok_log_level")]
    pub kwok_log_level: String,
    /// How long systemd waits before starting K3s again after it died
    /// (K3s's unit: `Restart=always`, `RestartSec=5s`).
    #[serde(default = "default_restart_delay", with = "humantime_serde_compat")]
    pub restart_delay: Duration,
    /// The process whose lab this host belongs to: when it is gone (a test
    /// killed outright runs no cleanup), K3s stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    /// Present on servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerConfig>,
}

/// What a server runs besides its kubelet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// etcd's `--initial-cluster`: `name=https://ip:2380,...`.
    pub etcd_initial_cluster: String,
    /// etcd's `--initial-cluster-token`.
    pub etcd_cluster_token: String,
    pub service_cidr: String,
    /// kube-controller-manager's `--node-monitor-grace-period`: how long a
    /// silent node stays Ready.
    #[serde(with = "humantime_serde_compat")]
    pub node_monitor_grace_period: Duration,
    /// The address clients reach every API server at (the load balancer), a
    /// SAN of every serving certificate.
    pub registration_address: Ipv4Addr,
}

fn default_lease_seconds() -> u32 {
    8
}

fn default_kwok_log_level() -> String {
    "WARN".into()
}

fn default_restart_delay() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid real-tier host configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

impl RealHostConfig {
    pub fn load(path: &Path) -> Result<RealHostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: RealHostConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a host configuration serializes")
    }

    fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() {
            return Err("node is empty".into());
        }
        if !self.api_url.starts_with("https://") {
            return Err(format!("api_url {:?} is not an https URL", self.api_url));
        }
        if self.node_lease_seconds < 4 {
            return Err(format!(
                "node_lease_seconds = {} is too short (4 or more)",
                self.node_lease_seconds
            ));
        }
        for tool in self.tools() {
            let path = self.bin_dir.join(tool);
            if !path.is_file() {
                return Err(format!(
                    "{} is missing (bin_dir); scripts/build-testbed.sh builds it",
                    path.display()
                ));
            }
        }
        if !self.kwok_stages.is_file() {
            return Err(format!(
                "kwok_stages {} is missing",
                self.kwok_stages.display()
            ));
        }
        Ok(())
    }

    /// The testbed binaries this host runs.
    pub fn tools(&self) -> Vec<&'static str> {
        let mut tools = vec!["kwok"];
        if self.server.is_some() {
            tools.extend([
                "etcd",
                "etcdctl",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ]);
        }
        tools
    }

    pub fn binary(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    /// The systemd unit K3s runs as on this host.
    pub fn unit(&self) -> &'static str {
        if self.server.is_some() {
            "k3s.service"
        } else {
            "k3s-agent.service"
        }
    }
}

/// Durations as humantime strings ("12s") in the TOML file.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> RealHostConfig {
        for tool in ["kwok", "etcd"] {
            std::fs::write(dir.join(tool), "").unwrap();
        }
        std::fs::write(dir.join("stages.yaml"), "").unwrap();
        RealHostConfig {
            node: "worker-01".into(),
            address: Ipv4Addr::new(10, 77, 0, 13),
            bin_dir: dir.to_owned(),
            kwok_stages: dir.join("stages.yaml"),
            api_url: "https://10.77.0.2:6443".into(),
            pod_cidr: "10.42.3.0/24".into(),
            labels: BTreeMap::from([("k3sfleet.io/pool".into(), "general".into())]),
            node_lease_seconds: 8,
            kwok_log_level: "WARN".into(),
            restart_delay: Duration::from_secs(5),
            owner_pid: None,
            server: None,
        }
    }

    #[test]
    fn a_config_survives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let path = dir.path().join("k3s-real.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        assert_eq!(RealHostConfig::load(&path).unwrap(), config);
        assert_eq!(config.unit(), "k3s-agent.service");
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k3s-real.toml");
        let mut config = config(dir.path());
        config.api_url = "http://10.77.0.2:6443".into();
        std::fs::write(&path, config.to_toml()).unwrap();
        let err = RealHostConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("api_url") && err.contains("not an https URL"),
            "{err}"
        );

        let mut config = super::tests::config(dir.path());
        config.server = Some(ServerConfig {
            etcd_initial_cluster: "server-1=https://10.77.0.10:2380".into(),
            etcd_cluster_token: "t".into(),
            service_cidr: "10.43.0.0/16".into(),
            node_monitor_grace_period: Duration::from_secs(12),
            registration_address: Ipv4Addr::new(10, 77, 0, 2),
        });
        std::fs::write(&path, config.to_toml()).unwrap();
        let err = RealHostConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("etcdctl is missing") && err.contains("build-testbed.sh"),
            "{err}"
        );

        std::fs::write(&path, "node = 3\n").unwrap();
        let err = RealHostConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("not a valid real-tier host configuration"),
            "{err}"
        );
    }
}
