//! The K3s binary on this host: its state, installs and upgrades with
//! automatic rollback, rollback on request, and etcd snapshots on servers.
//!
//! Compared with install.sh (download, `chmod 755`, `mv -f`): the download
//! is verified against the release's checksum file before it goes anywhere
//! near the target, the previous binary is kept for rollback, and the
//! restarted service must prove itself healthy or the previous binary comes
//! back.

mod binary;
mod download;
pub mod fetch;
mod install;
mod intent;
pub mod release;
mod rollback;
mod settle;
mod snapshot;
pub mod trust;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k3sfleet_daemon::config::{self, ConfigError};
use k3sfleet_proto::v1::{CommandOutcome, CommandResult, K3sState};
use serde::Deserialize;

use crate::config::{AgentConfig, K3sRole};
use crate::host::systemd::Systemctl;
use crate::host::{HostRoot, HostTools, Tool};
use binary::BinarySlot;
use intent::IntentFile;
pub use settle::Settled;

/// `[host.k3s]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sConfig {
    /// The K3s binary (a host path, under `host.root`).
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// How long a restarted K3s may take to become active and report the new
    /// version before the previous binary is put back (when the command does
    /// not say).
    #[serde(default = "default_health_timeout", with = "k3sfleet_daemon::duration")]
    pub health_timeout: Duration,
    /// Longest `k3s etcd-snapshot save` may run.
    #[serde(
        default = "default_snapshot_timeout",
        with = "k3sfleet_daemon::duration"
    )]
    pub snapshot_timeout: Duration,
    /// A download that delivers no data for this long is abandoned.
    #[serde(default = "default_stall_timeout", with = "k3sfleet_daemon::duration")]
    pub download_stall_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for https mirrors, besides the host's.
    #[serde(default)]
    pub mirror_ca: Option<PathBuf>,
    /// minisign public keys (the base64 line of a `.pub` file) whose signed
    /// release manifests this host installs; empty: releases are not verified.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Mirror base URLs this host may fetch from over plain http.
    #[serde(default)]
    pub http_mirrors: Vec<String>,
}

fn default_binary() -> PathBuf {
    PathBuf::from("/usr/local/bin/k3s")
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_snapshot_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for K3sConfig {
    fn default() -> Self {
        K3sConfig {
            binary: default_binary(),
            health_timeout: default_health_timeout(),
            snapshot_timeout: default_snapshot_timeout(),
            download_stall_timeout: default_stall_timeout(),
            mirror_ca: None,
            trusted_keys: Vec::new(),
            http_mirrors: Vec::new(),
        }
    }
}

impl K3sConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !self.binary.is_absolute() || self.binary.file_name().is_none() {
            return Err(config::invalid(
                path,
                "host.k3s.binary",
                format!("{} is not an absolute file path", self.binary.display()),
            ));
        }
        for (key, value) in [
            ("host.k3s.health_timeout", self.health_timeout),
            ("host.k3s.snapshot_timeout", self.snapshot_timeout),
            (
                "host.k3s.download_stall_timeout",
                self.download_stall_timeout,
            ),
        ] {
            if value < Duration::from_secs(1) {
                return Err(config::invalid(path, key, "must be at least 1s"));
            }
        }
        if let Some(ca) = &self.mirror_ca
            && let Err(err) = k3sfleet_pki::read_certificates(ca)
        {
            return Err(config::invalid(path, "host.k3s.mirror_ca", err.to_string()));
        }
        for (i, key) in self.trusted_keys.iter().enumerate() {
            if let Err(err) = k3sfleet_release::TrustedKey::parse(key) {
                return Err(config::invalid(
                    path,
                    &format!("host.k3s.trusted_keys[{i}]"),
                    err.to_string(),
                ));
            }
        }
        for (i, mirror) in self.http_mirrors.iter().enumerate() {
            if !mirror.starts_with("http://") {
                return Err(config::invalid(
                    path,
                    &format!("host.k3s.http_mirrors[{i}]"),
                    format!("{mirror:?} is not an http:// URL (https mirrors need no entry)"),
                ));
            }
        }
        Ok(())
    }
}

/// The K3s unit of a role.
pub fn unit_of(role: K3sRole) -> &'static str {
    match role {
        K3sRole::Server => "k3s.service",
        K3sRole::Agent => "k3s-agent.service",
    }
}

/// Manages the K3s binary of one host.
pub struct K3sManager {
    config: K3sConfig,
    root: HostRoot,
    role: K3sRole,
    arch: String,
    tools: HostTools,
    slot: BinarySlot,
    intent: IntentFile,
    trust: trust::ReleaseTrust,
    /// For artifacts streamed from the coordinator; `None` outside the daemon.
    coordinator: Option<Arc<AgentConfig>>,
    /// Release tag per binary hash: `k3s --version` is run once per binary.
    versions: Mutex<HashMap<String, String>>,
    /// One install, rollback, snapshot or settling at a time.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for K3sManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K3sManager")
            .field("role", &self.role)
            .field("binary", &self.slot.target())
            .finish_non_exhaustive()
    }
}

/// What the manager needs to know about its host.
#[derive(Debug, Clone)]
pub struct K3sHost {
    pub root: HostRoot,
    pub role: K3sRole,
    /// Kubernetes-style architecture of this host.
    pub arch: String,
    pub tools: HostTools,
    pub state_dir: PathBuf,
    pub coordinator: Option<Arc<AgentConfig>>,
}

impl K3sManager {
    pub fn new(config: K3sConfig, host: K3sHost) -> Self {
        let slot = BinarySlot::new(host.root.path(&config.binary));
        let trust =
            trust::ReleaseTrust::new(&config.trusted_keys, &config.http_mirrors, &host.state_dir);
        K3sManager {
            config,
            root: host.root,
            role: host.role,
            arch: host.arch,
            tools: host.tools,
            slot,
            intent: IntentFile::new(&host.state_dir),
            trust,
            coordinator: host.coordinator,
            versions: Mutex::new(HashMap::new()),
            busy: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Removes the temporary files (downloads, staged names, a half-written
    /// intent) an agent killed mid-install left (the binary is never one).
    pub fn remove_leftovers(&self) {
        let removed = download::remove_leftovers(self.slot.dir())
            + usize::from(self.intent.remove_leftover());
        if removed > 0 {
            tracing::info!(
                removed,
                dir = %self.slot.dir().display(),
                "removed temporary files left by an interrupted install"
            );
        }
    }

    pub fn unit(&self) -> &'static str {
        unit_of(self.role)
    }

    pub fn role(&self) -> K3sRole {
        self.role
    }

    /// Whether installs and rollbacks are checked against signed manifests.
    pub fn releases_verified(&self) -> bool {
        self.trust.keys.enabled()
    }

    /// The `k3s.releases` check.
    pub fn releases_check(&self) -> k3sfleet_proto::v1::CheckResult {
        self.trust.check()
    }

    /// What is installed and whether its service runs.
    pub async fn state(&self) -> K3sState {
        let (installed_version, binary_sha256) = self.describe(self.slot.target()).await;
        let (previous_version, _) = if self.slot.has_previous() {
            self.describe(self.slot.previous()).await
        } else {
            (String::new(), String::new())
        };
        let service_active = !binary_sha256.is_empty()
            && Systemctl(&self.tools)
                .is_active(self.unit())
                .await
                .unwrap_or(false);
        K3sState {
            installed_version,
            binary_sha256,
            service_unit: self.unit().to_string(),
            service_active,
            previous_version,
        }
    }

    /// The installed version, empty when there is no binary.
    pub async fn installed_version(&self) -> String {
        self.describe(self.slot.target()).await.0
    }

    /// (version, sha256) of the binary at `path`; empty strings for what
    /// cannot be told.
    async fn describe(&self, path: &Path) -> (String, String) {
        let sha = match self.slot.sha256_of(path).await {
            Ok(Some(sha)) => sha,
            Ok(None) => return (String::new(), String::new()),
            Err(err) => {
                tracing::warn!(error = %crate::session::display_error(&err), "cannot inspect the K3s binary");
                return (String::new(), String::new());
            }
        };
        (self.version_of(path, &sha).await.unwrap_or_default(), sha)
    }

    /// `<path> --version`, cached by hash.
    async fn version_of(&self, path: &Path, sha: &str) -> Option<String> {
        if let Some(version) = self.lock_versions().get(sha) {
            return Some(version.clone());
        }
        let output = self
            .tools
            .run_program(Tool::K3s, path, ["--version"], self.tools.timeout())
            .await
            .ok()?;
        let version = release::parse_version_output(&output.stdout)?;
        self.lock_versions()
            .insert(sha.to_string(), version.clone());
        Some(version)
    }

    fn lock_versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A result without detail.
fn outcome(outcome: CommandOutcome, message: impl Into<String>) -> CommandResult {
    CommandResult {
        outcome: outcome as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// The first 12 hex digits of a digest, for messages.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
