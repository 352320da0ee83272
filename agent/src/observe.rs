//! One look at the host: the K3s state, Tailscale, disks, and every check.
//! Reports, `/metrics` and `k3sfleet-agent check` are all made from an
//! [`Observation`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k3sfleet_proto::v1::{CheckResult, DiskHealth, Health, K3sState, TailscaleState};

use crate::checks::{self, LonghornConfig, inventory};
use crate::config::{AgentConfig, K3sRole};
use crate::disks::DiskProbe;
use crate::etcd::EtcdProbe;
use crate::host::{HostConfig, HostFacts, HostRoot, HostTools};
use crate::k3s::{K3sHost, K3sManager};
use crate::tailscale::Tailscale;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub observed_at_unix_ms: i64,
    pub k3s: K3sState,
    pub tailscale: TailscaleState,
    pub disks: Vec<DiskHealth>,
    pub checks: Vec<CheckResult>,
    /// Whether installs are checked against signed release manifests.
    pub releases_verified: bool,
    /// How long gathering took.
    pub duration: Duration,
}

impl Observation {
    pub fn overall(&self) -> Health {
        checks::overall(&self.checks)
    }

    /// What, when it changes, deserves a report before the next interval:
    /// any check's status, the K3s version or service state, Tailscale's state.
    pub fn signature(&self) -> Vec<String> {
        let mut signature: Vec<String> = self
            .checks
            .iter()
            .map(|c| format!("{}={}", c.id, c.status))
            .collect();
        signature.push(format!(
            "k3s={}/{}/{}",
            self.k3s.installed_version, self.k3s.binary_sha256, self.k3s.service_active
        ));
        signature.push(format!("tailscale={}", self.tailscale.backend_state));
        signature
    }
}

/// Everything that looks at (and acts on) the host, built from the config.
pub struct HostProbe {
    pub root: HostRoot,
    pub tools: HostTools,
    pub facts: HostFacts,
    pub k3s: Arc<K3sManager>,
    pub tailscale: Tailscale,
    pub disks: DiskProbe,
    longhorn: LonghornConfig,
    /// Servers only.
    etcd: Option<EtcdProbe>,
}

impl std::fmt::Debug for HostProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostProbe")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl HostProbe {
    /// `coordinator` is the daemon's config, for artifacts streamed from the
    /// coordinator; `None` for `k3sfleet-agent check`.
    pub fn new(
        host: &HostConfig,
        role: K3sRole,
        state_dir: PathBuf,
        coordinator: Option<Arc<AgentConfig>>,
    ) -> Self {
        let root = HostRoot::new(host.root.clone());
        let tools = host.tools();
        let facts = HostFacts::read(&root);
        let k3s = K3sManager::new(
            host.k3s.clone(),
            K3sHost {
                root: root.clone(),
                role,
                arch: facts.arch.clone(),
                tools: tools.clone(),
                state_dir: state_dir.clone(),
                coordinator,
            },
        );
        HostProbe {
            tailscale: Tailscale::new(tools.clone(), state_dir, host.tailscale.clone()),
            disks: DiskProbe::new(root.clone(), host.disks.clone(), tools.clone()),
            k3s: Arc::new(k3s),
            longhorn: host.longhorn.clone(),
            etcd: (role == K3sRole::Server)
                .then(|| EtcdProbe::new(host.etcd.clone(), root.clone())),
            root,
            tools,
            facts,
        }
    }

    pub async fn observe(&self, now_unix_ms: i64) -> Observation {
        let started = Instant::now();
        let (k3s, tailscale, disks, inventory) = tokio::join!(
            self.k3s.state(),
            self.tailscale.status(),
            self.disks.probe_all(started),
            async {
                if self.longhorn.checks {
                    Some(inventory::gather(&self.root, &self.tools, &self.facts).await)
                } else {
                    None
                }
            }
        );
        let mut all = vec![
            checks::services::k3s(&k3s),
            checks::services::tailscale(&tailscale, now_unix_ms),
            self.k3s.releases_check(),
        ];
        if let Some(etcd) = &self.etcd
            && !k3s.binary_sha256.is_empty()
        {
            all.push(etcd.check(k3s.service_active).await);
        }
        all.extend(checks::disk::run(&disks, self.disks.config()));
        if let Some(inventory) = &inventory {
            all.extend(checks::longhorn::run(inventory, &self.longhorn));
        }
        Observation {
            observed_at_unix_ms: now_unix_ms,
            k3s,
            tailscale,
            disks: disks.into_iter().map(|d| d.health).collect(),
            checks: all,
            releases_verified: self.k3s.releases_verified(),
            duration: started.elapsed(),
        }
    }
}

pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
