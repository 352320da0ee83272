//! The real host duties: what `k3sfleet-agent run` does on a host.
//!
//! A background loop observes the host every `host.check_interval` and
//! signals the session when a check changes state; reports and `/metrics`
//! are made from the latest observation plus freshly sampled host figures.
//! Commands run against the same [`HostProbe`]; after each one the host is
//! observed again so the coordinator sees the result at once.

use std::sync::{Arc, Mutex};

use k3sfleet_proto::v1::{Command, CommandOutcome, CommandResult, HealthReport, command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::duties::{HostDuties, ProgressSink};
use crate::host::{HostFacts, HostFigureSampler};
use crate::metrics::Families;
use crate::observe::{HostProbe, Observation, unix_ms_now};
use crate::remediate;

pub struct HostAgent {
    config: Arc<AgentConfig>,
    probe: HostProbe,
    figures: HostFigureSampler,
    latest: Mutex<Option<Arc<Observation>>>,
    /// One observation at a time.
    observing: tokio::sync::Mutex<()>,
    changes: watch::Sender<u64>,
    metrics: Mutex<Families>,
}

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent")
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl HostAgent {
    pub fn new(config: Arc<AgentConfig>) -> Arc<Self> {
        let probe = HostProbe::new(
            &config.host,
            config.role,
            config.state_dir.clone(),
            Some(config.clone()),
        );
        probe.k3s.remove_leftovers();
        Arc::new(HostAgent {
            config,
            probe,
            figures: HostFigureSampler::default(),
            latest: Mutex::new(None),
            observing: tokio::sync::Mutex::new(()),
            changes: watch::channel(0).0,
            metrics: Mutex::new(Families::default()),
        })
    }

    /// Observes the host every `host.check_interval` until `stop` is cancelled.
    pub fn spawn_observer(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                agent.observe_now().await;
                tokio::select! {
                    _ = tokio::time::sleep(agent.config.host.check_interval) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }

    /// Settles a K3s install a previous run left half done (see
    /// `k3s/settle.rs`; commands wait for it), then observes the host so the
    /// outcome is reported at once. `None` when nothing was pending.
    pub fn spawn_settle(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let settling = self.probe.k3s.spawn_settle()?;
        let agent = self.clone();
        Some(tokio::spawn(async move {
            let _ = settling.await;
            agent.observe_now().await;
        }))
    }

    /// Runs `[host.tailscale.enroll]`, if configured, in the background.
    pub fn spawn_tailscale_enrollment(
        self: &Arc<Self>,
        node_name: String,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.config.host.tailscale.enroll.as_ref()?;
        let agent = self.clone();
        Some(tokio::spawn(async move {
            let observe = || async {
                agent.observe_now().await;
            };
            crate::tailscale::enroll::run(&agent.probe.tailscale, &node_name, &stop, observe).await;
        }))
    }

    /// Observes the host, keeps the result, and signals a change when a
    /// check, K3s or Tailscale changed state.
    pub async fn observe_now(&self) -> Arc<Observation> {
        let _one = self.observing.lock().await;
        let observation = Arc::new(self.probe.observe(unix_ms_now()).await);
        let previous = self.lock_latest().replace(observation.clone());
        let changed = previous.is_none_or(|p| p.signature() != observation.signature());
        if changed {
            tracing::debug!(overall = ?observation.overall(), "host state changed");
            self.changes.send_modify(|n| *n += 1);
        }
        observation
    }

    fn lock_latest(&self) -> std::sync::MutexGuard<'_, Option<Arc<Observation>>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn latest_or_observe(&self) -> Arc<Observation> {
        let latest = self.lock_latest().clone();
        match latest {
            Some(observation) => observation,
            None => self.observe_now().await,
        }
    }

    /// The `/metrics` text: the latest observation and fresh host figures.
    pub fn metrics_text(&self) -> String {
        let observation = self.lock_latest().clone();
        let figures = self.figures.sample();
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.set(self.config.role.as_str(), observation.as_deref(), &figures);
        metrics.set_certificate_expiry(certificate_not_after(&self.config.tls.cert));
        prometheus::TextEncoder::new()
            .encode_to_string(&metrics.registry.gather())
            .unwrap_or_else(|err| format!("# encoding the metrics failed: {err}\n"))
    }
}

/// The notAfter of the agent's client certificate, read at scrape time so a
/// renewed certificate shows at once; `None` when it cannot be read.
fn certificate_not_after(path: &std::path::Path) -> Option<i64> {
    let certs = k3sfleet_pki::read_certificates(path).ok()?;
    let leaf = certs.first()?;
    k3sfleet_pki::PeerIdentity::from_der(leaf)
        .ok()
        .map(|identity| identity.not_after)
}

/// The command's kind, for logs and metrics.
fn kind_of(command: &Command) -> &'static str {
    match &command.action {
        Some(command::Action::InstallK3s(_)) => "install_k3s",
        Some(command::Action::RollbackK3s(_)) => "rollback_k3s",
        Some(command::Action::EtcdSnapshot(_)) => "etcd_snapshot",
        Some(command::Action::TailscaleUp(_)) => "tailscale_up",
        Some(command::Action::Remediate(_)) => "remediate",
        None => "unknown",
    }
}

fn outcome_name(outcome: i32) -> &'static str {
    match CommandOutcome::try_from(outcome).unwrap_or(CommandOutcome::Unspecified) {
        CommandOutcome::Succeeded => "succeeded",
        CommandOutcome::NoOp => "no_op",
        CommandOutcome::Failed => "failed",
        CommandOutcome::Rejected => "rejected",
        CommandOutcome::Unspecified => "unknown",
    }
}

impl HostDuties for HostAgent {
    fn facts(&self) -> HostFacts {
        HostFacts::read(&self.probe.root)
    }

    async fn k3s_version(&self) -> String {
        self.probe.k3s.installed_version().await
    }

    async fn report(&self) -> HealthReport {
        let observation = self.latest_or_observe().await;
        HealthReport {
            sequence: 0,
            observed_at_unix_ms: observation.observed_at_unix_ms,
            overall: observation.overall() as i32,
            host: Some(self.figures.sample()),
            k3s: Some(observation.k3s.clone()),
            tailscale: Some(observation.tailscale.clone()),
            disks: observation.disks.clone(),
            checks: observation.checks.clone(),
        }
    }

    async fn execute(&self, command: Command, progress: ProgressSink) -> CommandResult {
        let kind = kind_of(&command);
        let id = command.id.clone();
        let probe = &self.probe;
        let mut result = match command.action {
            Some(command::Action::InstallK3s(install)) => {
                probe.k3s.install(install, &progress).await
            }
            Some(command::Action::RollbackK3s(request)) => {
                probe.k3s.rollback(request, &progress).await
            }
            Some(command::Action::EtcdSnapshot(snapshot)) => {
                probe.k3s.snapshot(snapshot, &progress).await
            }
            Some(command::Action::TailscaleUp(up)) => probe.tailscale.up(up, &progress).await,
            Some(command::Action::Remediate(fix)) => {
                let facts = HostFacts::read(&probe.root);
                remediate::remediate(&probe.root, &probe.tools, &facts, &fix, &progress)
                    .await
                    .into_result()
            }
            None => CommandResult {
                outcome: CommandOutcome::Rejected as i32,
                message: "this agent does not know the command (is the coordinator newer?)".into(),
                ..Default::default()
            },
        };
        result.command_id = id.clone();
        let outcome = outcome_name(result.outcome);
        tracing::info!(command = id, kind, outcome, "{}", result.message);
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count_command(kind, outcome);
        // Observe at once: a changed state is reported right away.
        self.observe_now().await;
        result
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
