//! The host the agent manages, seen through a configurable root directory so
//! tests can run real agents against a sandboxed host.

mod facts;
mod figures;
pub mod selinux;
pub mod systemd;
pub mod tools;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k3sfleet_daemon::config::{self, ConfigError};
use serde::Deserialize;

pub use facts::HostFacts;
pub use figures::HostFigureSampler;
pub use tools::{HostTools, Tool, ToolError, ToolOutput, ToolPaths};

use crate::checks::LonghornConfig;
use crate::disks::DisksConfig;
use crate::k3s::K3sConfig;

/// `[host]`: the host the agent manages and how it reaches its tools.
/// Every key is optional; the defaults fit a standard K3s host:
///
/// ```toml
/// [host]
/// root = "/"                 # every host path is resolved under this
/// tool_timeout = "30s"       # any host tool call is killed after this
/// check_interval = "15s"     # host checks; a changed status is reported at once
///
/// [host.tools]               # a bare name is looked up in PATH
/// systemctl = "systemctl"
/// tailscale = "tailscale"
/// smartctl = "smartctl"
/// dpkg_query = "dpkg-query"
/// rpm = "rpm"
/// modprobe = "modprobe"
/// chcon = "chcon"
///
/// [host.k3s]
/// binary = "/usr/local/bin/k3s"   # the previous one is kept as <binary>.previous
/// health_timeout = "3m"           # new version must be active by then, else rollback
/// snapshot_timeout = "5m"         # k3s etcd-snapshot save
/// download_stall_timeout = "60s"  # a download with no data for this long fails
/// # mirror_ca = "/etc/k3sfleet/mirror-ca.pem"  # extra CA for https mirrors
/// # trusted_keys = ["RWQ..."]      # minisign public keys; set: only signed releases install
/// # http_mirrors = ["http://mirror.lan/k3s"]     # mirrors allowed over plain http
///
/// [host.disks]
/// paths = ["/var/lib/rancher", "/var/lib/longhorn"]
/// statfs_timeout = "5s"      # a hanging filesystem is an error after this
/// free_warning_ratio = 0.20  # free space or inodes below: warning
/// free_error_ratio = 0.10    # ... below: error
/// smart = true
///
/// [host.longhorn]
/// checks = true              # the Longhorn preflight checks
/// v2_data_engine = false     # also huge pages, SPDK modules, CPU flags
///
/// [host.tailscale]           # see crate::tailscale::config
/// socket = "/run/tailscale/tailscaled.sock"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Every host path the agent reads or writes is resolved under this root.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Longest a host tool may run (except K3s restarts and snapshots, which
    /// have their own limits); it is killed after that.
    #[serde(default = "default_tool_timeout", with = "k3sfleet_daemon::duration")]
    pub tool_timeout: Duration,
    /// How often the host checks run; a check changing state is reported at once.
    #[serde(default = "default_check_interval", with = "k3sfleet_daemon::duration")]
    pub check_interval: Duration,
    #[serde(default)]
    pub tools: ToolPaths,
    #[serde(default)]
    pub k3s: K3sConfig,
    #[serde(default)]
    pub disks: DisksConfig,
    #[serde(default)]
    pub longhorn: LonghornConfig,
    /// Servers only: where the local etcd member answers.
    #[serde(default)]
    pub etcd: crate::etcd::EtcdConfig,
    /// tailscaled's socket, the `tailscale up` flags allowed here, enrollment at start.
    #[serde(default)]
    pub tailscale: crate::tailscale::TailscaleConfig,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            root: default_root(),
            tool_timeout: default_tool_timeout(),
            check_interval: default_check_interval(),
            tools: ToolPaths::default(),
            k3s: K3sConfig::default(),
            disks: DisksConfig::default(),
            longhorn: LonghornConfig::default(),
            etcd: crate::etcd::EtcdConfig::default(),
            tailscale: crate::tailscale::TailscaleConfig::default(),
        }
    }
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_tool_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(15)
}

impl HostConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !self.root.is_dir() {
            return Err(config::invalid(
                path,
                "host.root",
                format!("{} is not a directory", self.root.display()),
            ));
        }
        if self.tool_timeout < Duration::from_millis(100) {
            return Err(config::invalid(
                path,
                "host.tool_timeout",
                "must be at least 100ms",
            ));
        }
        if self.check_interval < Duration::from_secs(1) {
            return Err(config::invalid(
                path,
                "host.check_interval",
                "must be at least 1s",
            ));
        }
        self.k3s.validate(path)?;
        self.disks.validate(path)?;
        self.tailscale.validate(path)
    }

    /// The host tools, with the K3s binary resolved under the root.
    pub fn tools(&self) -> HostTools {
        let root = HostRoot::new(self.root.clone());
        HostTools::new(
            self.tools.clone(),
            root.path(&self.k3s.binary),
            self.tool_timeout,
        )
    }
}

/// Resolves absolute host paths under the configured root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot(root.into())
    }

    /// `/etc/os-release` under the root.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let relative = host_path
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(host_path.as_ref());
        self.0.join(relative)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_resolve_under_the_root() {
        let root = HostRoot::new("/tmp/host");
        assert_eq!(
            root.path("/etc/os-release"),
            PathBuf::from("/tmp/host/etc/os-release")
        );
        assert_eq!(
            HostRoot::new("/").path("/etc/os-release"),
            PathBuf::from("/etc/os-release")
        );
    }
}
