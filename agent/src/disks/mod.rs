//! Disk health of the paths K3s and Longhorn keep data in: filesystem type,
//! size, free space and inodes, read-only mounts, and SMART health.

pub mod mountinfo;
pub mod smart;
pub mod statfs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k3sfleet_daemon::config::{self, ConfigError};
use k3sfleet_proto::v1::{DiskHealth, SmartHealth};
use serde::Deserialize;

use crate::host::{HostRoot, HostTools, Tool, ToolError};
use crate::session::display_error;
use statfs::{Statfs, StatfsCall};

/// SMART attributes change slowly and smartctl can wake sleeping disks:
/// ask at most this often per disk.
const SMART_REFRESH: Duration = Duration::from_secs(600);

/// `[host.disks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisksConfig {
    /// Host paths whose filesystems are watched.
    #[serde(default = "default_paths")]
    pub paths: Vec<PathBuf>,
    /// statfs on a hanging filesystem is reported as an error after this long.
    #[serde(default = "default_statfs_timeout", with = "k3sfleet_daemon::duration")]
    pub statfs_timeout: Duration,
    /// Free space (or free inodes) below this share of the filesystem is a warning...
    #[serde(default = "default_warning_ratio")]
    pub free_warning_ratio: f64,
    /// ... and below this, an error.
    #[serde(default = "default_error_ratio")]
    pub free_error_ratio: f64,
    /// Ask smartctl about the disks under the paths.
    #[serde(default = "default_true")]
    pub smart: bool,
}

fn default_paths() -> Vec<PathBuf> {
    vec!["/var/lib/rancher".into(), "/var/lib/longhorn".into()]
}
fn default_statfs_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_warning_ratio() -> f64 {
    0.20
}
fn default_error_ratio() -> f64 {
    0.10
}
fn default_true() -> bool {
    true
}

impl Default for DisksConfig {
    fn default() -> Self {
        DisksConfig {
            paths: default_paths(),
            statfs_timeout: default_statfs_timeout(),
            free_warning_ratio: default_warning_ratio(),
            free_error_ratio: default_error_ratio(),
            smart: true,
        }
    }
}

impl DisksConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(bad) = self.paths.iter().find(|p| !p.is_absolute()) {
            return Err(config::invalid(
                path,
                "host.disks.paths",
                format!("{} is not an absolute path", bad.display()),
            ));
        }
        if self.statfs_timeout < Duration::from_millis(100) {
            return Err(config::invalid(
                path,
                "host.disks.statfs_timeout",
                "must be at least 100ms",
            ));
        }
        let ratio = |r: f64| (0.0..1.0).contains(&r);
        if !ratio(self.free_warning_ratio) {
            return Err(config::invalid(
                path,
                "host.disks.free_warning_ratio",
                "must be between 0 and 1",
            ));
        }
        if !ratio(self.free_error_ratio) || self.free_error_ratio > self.free_warning_ratio {
            return Err(config::invalid(
                path,
                "host.disks.free_error_ratio",
                "must be between 0 and free_warning_ratio",
            ));
        }
        Ok(())
    }
}

/// One watched path as found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbedDisk {
    pub health: DiskHealth,
    /// Whether the path itself exists; if not, the figures are those of the
    /// filesystem it would be created on.
    pub exists: bool,
}

pub struct DiskProbe {
    root: HostRoot,
    config: DisksConfig,
    tools: HostTools,
    statfs: Statfs,
    smart: Mutex<HashMap<PathBuf, (Instant, SmartHealth)>>,
}

impl std::fmt::Debug for DiskProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskProbe")
            .field("paths", &self.config.paths)
            .finish_non_exhaustive()
    }
}

impl DiskProbe {
    pub fn new(root: HostRoot, config: DisksConfig, tools: HostTools) -> Self {
        DiskProbe::with_statfs(root, config, tools, Arc::new(statfs::RealStatfs))
    }

    pub fn with_statfs(
        root: HostRoot,
        config: DisksConfig,
        tools: HostTools,
        call: Arc<dyn StatfsCall>,
    ) -> Self {
        let statfs = Statfs::new(call, config.statfs_timeout);
        DiskProbe {
            root,
            config,
            tools,
            statfs,
            smart: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &DisksConfig {
        &self.config
    }

    /// Probes every configured path, all at once (one hanging filesystem
    /// delays the others by at most the statfs timeout).
    pub async fn probe_all(&self, now: Instant) -> Vec<ProbedDisk> {
        let mounts = std::fs::read_to_string(self.root.path("/proc/1/mountinfo"))
            .or_else(|_| std::fs::read_to_string(self.root.path("/proc/self/mountinfo")))
            .map(|text| mountinfo::parse(&text))
            .unwrap_or_default();
        let probes = self
            .config
            .paths
            .iter()
            .map(|path| self.probe(path, &mounts, now));
        futures::future::join_all(probes).await
    }

    async fn probe(&self, path: &Path, mounts: &[mountinfo::Mount], now: Instant) -> ProbedDisk {
        let mut health = DiskHealth {
            path: path.display().to_string(),
            ..Default::default()
        };
        let real = self.root.path(path);
        let exists = real.exists();
        let mount = mountinfo::mount_of(mounts, path);
        if let Some(mount) = mount {
            health.mount_point = mount.mount_point.clone();
            health.device = mount.source.clone();
            health.fs_type = mount.fs_type.clone();
            health.read_only = mount.read_only;
        }
        match self.statfs.figures(&nearest_existing(&real)).await {
            Ok(figures) => {
                health.size_bytes = figures.size_bytes;
                health.available_bytes = figures.available_bytes;
                health.inodes_total = figures.inodes_total;
                health.inodes_free = figures.inodes_free;
                health.read_only |= figures.read_only;
            }
            Err(err) => health.error = display_error(&err),
        }
        if self.config.smart {
            let disk = mount.and_then(|m| smart::whole_disk(&self.root, &m.major_minor));
            health.smart = Some(match disk {
                Some(disk) => self.smart_of(&disk, now).await,
                None => SmartHealth {
                    error: "not backed by a local disk".into(),
                    ..Default::default()
                },
            });
        }
        ProbedDisk { health, exists }
    }

    async fn smart_of(&self, disk: &Path, now: Instant) -> SmartHealth {
        if let Some((at, health)) = self.lock_smart().get(disk)
            && now.duration_since(*at) < SMART_REFRESH
        {
            return health.clone();
        }
        let health = match self
            .tools
            .run(Tool::Smartctl, [Path::new("-j"), Path::new("-a"), disk])
            .await
        {
            Ok(output) => smart::parse(&output.stdout, output.code),
            Err(ToolError::NotFound { .. }) => SmartHealth {
                error: "smartctl is not installed (package smartmontools)".into(),
                ..Default::default()
            },
            Err(err) => SmartHealth {
                error: display_error(&err),
                ..Default::default()
            },
        };
        self.lock_smart()
            .insert(disk.to_owned(), (now, health.clone()));
        health
    }

    fn lock_smart(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Instant, SmartHealth)>> {
        self.smart.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `path` or its closest existing ancestor.
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}
