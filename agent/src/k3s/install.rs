//! Installing or upgrading K3s to an exact version.
//!
//! The steps, each safe to repeat after a crash:
//! 1. fetch the release's checksum file and take the binary's digest;
//! 2. if the installed binary already has that digest: a no-op when the
//!    service is active with that version and no install was interrupted,
//!    otherwise restart and verify;
//! 3. stream the binary into a temporary file beside the target, hashing on
//!    the way; refuse it on mismatch;
//! 4. record the intent, label for SELinux, keep the current binary as
//!    `.previous`, rename the new one over the target;
//! 5. restart the unit, wait until it is active and `k3s --version` says the
//!    requested version; otherwise put the previous binary back, restart it,
//!    and report why.

use std::time::{Duration, Instant};

use k3sfleet_proto::v1::{
    ArtifactSource, CommandOutcome, CommandResult, InstallK3s, InstallK3sResult, artifact_source,
    command_result,
};

use super::download::Expected;
use super::fetch::{self, Source};
use super::intent::InstallIntent;
use super::release::{self, Assets};
use super::{K3sManager, download, outcome, short, trust};
use crate::duties::ProgressSink;
use crate::host::selinux;
use crate::host::systemd::Systemctl;
use crate::session::display_error;

/// Checksum files are a few hundred bytes; anything this big is not one.
const CHECKSUM_FILE_LIMIT: u64 = 1024 * 1024;
/// How often the service state is polled while waiting for it.
const POLL: Duration = Duration::from_millis(500);

impl K3sManager {
    pub async fn install(&self, request: InstallK3s, progress: &ProgressSink) -> CommandResult {
        let version = request.version.trim().to_string();
        if !release::is_release_tag(&version) {
            return outcome(
                CommandOutcome::Rejected,
                format!("{version:?} is not a K3s release tag like v1.31.5+k3s1"),
            );
        }
        let Some(assets) = release::assets_for(&self.arch) else {
            return outcome(
                CommandOutcome::Rejected,
                format!("K3s publishes no binary for architecture {}", self.arch),
            );
        };
        let source = match self.source(request.source) {
            Ok(source) => source,
            Err(reason) => return outcome(CommandOutcome::Rejected, reason),
        };
        let health_timeout = match request.health_timeout_seconds {
            0 => self.config.health_timeout,
            seconds => Duration::from_secs(u64::from(seconds)),
        };
        let _busy = self.wait_until_idle(progress).await;
        download::remove_leftovers(self.slot.dir());
        let mut result = self
            .install_locked(&version, &assets, &source, health_timeout, progress)
            .await;
        if result.outcome != CommandOutcome::Rejected as i32 {
            let state = self.state().await;
            if let Some(command_result::Detail::InstallK3s(detail)) = &mut result.detail {
                detail.installed_version = state.installed_version;
                detail.sha256 = state.binary_sha256;
            }
        }
        result
    }

    pub(super) async fn wait_until_idle(
        &self,
        progress: &ProgressSink,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                progress.step("wait", "another K3s operation is running; waiting for it");
                self.busy.lock().await
            }
        }
    }

    fn source(&self, source: Option<ArtifactSource>) -> Result<Source, String> {
        match source.and_then(|s| s.kind) {
            Some(artifact_source::Kind::MirrorUrl(url)) => {
                let url = url.trim().to_string();
                self.trust.check_mirror(&url)?;
                let client = fetch::mirror_client(
                    self.config.mirror_ca.as_deref(),
                    Duration::from_secs(30),
                    self.config.download_stall_timeout,
                )
                .map_err(|err| display_error(&err))?;
                Ok(Source::Mirror { base: url, client })
            }
            Some(artifact_source::Kind::LocalDir(dir)) => {
                if !dir.starts_with('/') {
                    return Err(format!(
                        "local artifact directory {dir:?} must be an absolute path"
                    ));
                }
                let path = self.root.path(&dir);
                trust::check_owned_by_root(&path).map_err(|reason| {
                    format!("refusing local artifact directory {dir}: {reason}")
                })?;
                Ok(Source::LocalDir(path))
            }
            Some(artifact_source::Kind::Coordinator(_)) => match &self.coordinator {
                Some(config) => Ok(Source::Coordinator(config.clone())),
                None => Err("this agent has no coordinator connection to stream from".into()),
            },
            None => Err(
                "the command names no artifact source (mirror, local directory or coordinator)"
                    .into(),
            ),
        }
    }

    async fn install_locked(
        &self,
        version: &str,
        assets: &Assets,
        source: &Source,
        health_timeout: Duration,
        progress: &ProgressSink,
    ) -> CommandResult {
        let before = self.state().await;
        let failed = |message: String| {
            with_detail(
                CommandOutcome::Failed,
                message,
                before.installed_version.clone(),
                false,
            )
        };

        progress.step(
            "checksums",
            format!(
                "fetching {} of {version} from {}",
                if self.trust.keys.enabled() {
                    k3sfleet_release::MANIFEST_NAME
                } else {
                    assets.checksums
                },
                source.describe()
            ),
        );
        let expected = match self.expected(version, assets, source).await {
            Ok(digest) => digest,
            Err(fetch) => {
                return retryable(
                    failed(format!("{}; nothing was changed", fetch.reason)),
                    fetch.transient,
                );
            }
        };

        let pending = self.intent.read();
        if before.binary_sha256 == expected.sha256 {
            let interrupted = pending
                .as_ref()
                .is_some_and(|p| p.sha256 == expected.sha256 && p.version == version);
            if !interrupted && before.service_active && before.installed_version == version {
                return with_detail(
                    CommandOutcome::NoOp,
                    format!(
                        "already at {version} (sha256 {}), {} active",
                        short(&expected.sha256),
                        self.unit()
                    ),
                    before.installed_version.clone(),
                    false,
                );
            }
            let why = if interrupted {
                "an earlier install of this version was interrupted"
            } else {
                "the binary is in place but the service is not running it"
            };
            progress.step("restart", format!("{version} is already in place; {why}"));
            return self
                .activate(
                    version,
                    &before.installed_version,
                    health_timeout,
                    interrupted,
                    progress,
                )
                .await;
        }

        progress.step(
            "download",
            format!(
                "downloading {} {version} from {}",
                assets.binary,
                source.describe()
            ),
        );
        let downloaded = match self.download(version, assets, source, &expected).await {
            Ok(downloaded) => downloaded,
            Err(err) => {
                return retryable(
                    failed(format!(
                        "{}; the installed binary was not touched",
                        display_error(&err)
                    )),
                    err.is_transient(),
                );
            }
        };
        progress.step(
            "verify",
            format!(
                "{} bytes, sha256 {} matches {}",
                downloaded.size,
                short(&downloaded.sha256),
                expected.against
            ),
        );

        if let Err(err) = self.intent.write(&InstallIntent {
            version: version.to_string(),
            sha256: expected.sha256.clone(),
            previous_sha256: Some(before.binary_sha256.clone()),
        }) {
            return failed(display_error(&err));
        }
        if selinux::enforcing(&self.root) {
            progress.step(
                "relabel",
                "SELinux is enforcing: labeling the new binary container_runtime_exec_t",
            );
            if let Err(err) = selinux::label_k3s_binary(&self.tools, downloaded.path()).await {
                self.intent.clear();
                return failed(format!(
                    "{}; the installed binary was not touched",
                    display_error(&err)
                ));
            }
        }
        // After an interrupted install the target is that install's unverified
        // binary; `.previous` still holds the last good one, so keep it.
        let target_is_unverified = pending.is_some_and(|p| p.sha256 == before.binary_sha256);
        if !target_is_unverified && let Err(err) = self.slot.keep_previous() {
            self.intent.clear();
            return failed(format!(
                "{}; the installed binary was not touched",
                display_error(&err)
            ));
        }
        if let Err(err) = self.slot.install(downloaded.path()) {
            self.intent.clear();
            return failed(format!(
                "{}; the installed binary was not touched",
                display_error(&err)
            ));
        }
        downloaded.installed();
        progress.step(
            "swap",
            format!(
                "{} is now {version}; the previous binary is kept as {}",
                self.slot.target().display(),
                self.slot.previous().display()
            ),
        );
        self.activate(
            version,
            &before.installed_version,
            health_timeout,
            true,
            progress,
        )
        .await
    }

    /// What the binary must be: from a manifest signed by a trusted key when
    /// keys are set, else from the release's checksum file.
    async fn expected(
        &self,
        version: &str,
        assets: &Assets,
        source: &Source,
    ) -> Result<Expected, FetchFailure> {
        if self.trust.keys.enabled() {
            return self.signed_expectation(version, assets, source).await;
        }
        let text = self.fetch_small(version, assets.checksums, source).await?;
        let text = String::from_utf8_lossy(&text);
        let sha256 = release::checksum_for(&text, assets.binary).map_err(|err| FetchFailure {
            reason: format!(
                "{} of {version} from {}: {err}",
                assets.checksums,
                source.describe()
            ),
            transient: false,
        })?;
        Ok(Expected {
            version: version.to_string(),
            sha256,
            size: None,
            against: assets.checksums.to_string(),
        })
    }

    /// Fetches and verifies `version`'s signed manifest and keeps it for
    /// rollbacks; the checksum file on the source is not consulted.
    async fn signed_expectation(
        &self,
        version: &str,
        assets: &Assets,
        source: &Source,
    ) -> Result<Expected, FetchFailure> {
        let manifest = self
            .fetch_small(version, k3sfleet_release::MANIFEST_NAME, source)
            .await
            .map_err(|failure| failure.unsigned(version))?;
        let signature = self
            .fetch_small(version, k3sfleet_release::SIGNATURE_NAME, source)
            .await
            .map_err(|failure| failure.unsigned(version))?;
        let refused = |reason: String| FetchFailure {
            reason: format!("refusing {version}: {reason}"),
            transient: false,
        };
        let verified = self
            .trust
            .verify(version, &manifest, &signature)
            .map_err(refused)?;
        let artifact = verified
            .artifact(&self.arch)
            .map_err(|err| refused(err.to_string()))?;
        if artifact.name != assets.binary {
            return Err(refused(format!(
                "the signed manifest names {:?} for {}, not {:?}",
                artifact.name, self.arch, assets.binary
            )));
        }
        self.trust
            .remember(version, &manifest, &signature)
            .map_err(|err| {
                refused(format!(
                    "cannot keep its verified manifest for rollbacks: {err}"
                ))
            })?;
        Ok(Expected {
            version: version.to_string(),
            sha256: artifact.sha256.clone(),
            size: Some(artifact.size),
            against: format!("the release manifest signed by key {}", verified.key_id),
        })
    }

    async fn fetch_small(
        &self,
        version: &str,
        name: &str,
        source: &Source,
    ) -> Result<Vec<u8>, FetchFailure> {
        let stall = self.config.download_stall_timeout;
        let fetched = match source.open(version, name).await {
            Ok(reader) => reader.read_small(CHECKSUM_FILE_LIMIT, stall).await,
            Err(err) => Err(err),
        };
        fetched.map_err(|err| FetchFailure {
            reason: display_error(&err),
            transient: err.is_transient(),
        })
    }

    async fn download(
        &self,
        version: &str,
        assets: &Assets,
        source: &Source,
        expected: &Expected,
    ) -> Result<download::Downloaded, download::DownloadError> {
        let reader = source.open(version, assets.binary).await?;
        download::download(
            reader,
            &source.describe(),
            self.slot.dir(),
            expected,
            self.config.download_stall_timeout,
        )
        .await
    }

    /// Restarts the service on the binary now in place and verifies it; on
    /// failure puts the previous binary back if `may_roll_back`.
    pub(super) async fn activate(
        &self,
        version: &str,
        previous_version: &str,
        health_timeout: Duration,
        may_roll_back: bool,
        progress: &ProgressSink,
    ) -> CommandResult {
        let unit = self.unit();
        let unit_exists = Systemctl(&self.tools).exists(unit).await.unwrap_or(true);
        let verified = if unit_exists {
            progress.step("restart", format!("restarting {unit}"));
            self.restart_and_verify(version, health_timeout).await
        } else {
            self.binary_reports(version).await
        };
        match verified {
            Ok(()) => {
                self.intent.clear();
                let message = if unit_exists {
                    format!("{unit} is active on {version}")
                } else {
                    format!(
                        "the binary is {version}; {unit} is not set up on this host, so nothing was restarted"
                    )
                };
                progress.step("verified", message.clone());
                with_detail(
                    CommandOutcome::Succeeded,
                    format!("installed {version}: {message}"),
                    previous_version.to_string(),
                    false,
                )
            }
            Err(reason) if may_roll_back && self.slot.has_previous() => {
                progress.step(
                    "rollback",
                    format!("{reason}; putting the previous binary back"),
                );
                let back = self.put_back(unit_exists, health_timeout).await;
                self.intent.clear();
                with_detail(
                    CommandOutcome::Failed,
                    format!("{version} did not come up healthy: {reason}; {back}"),
                    previous_version.to_string(),
                    true,
                )
            }
            Err(reason) => {
                self.intent.clear();
                let tail = if may_roll_back {
                    "there is no previous binary to roll back to"
                } else {
                    "the binary was not changed"
                };
                with_detail(
                    CommandOutcome::Failed,
                    format!("{version} did not come up healthy: {reason}; {tail}"),
                    previous_version.to_string(),
                    false,
                )
            }
        }
    }

    /// Restores `.previous` and restarts; says how that went.
    async fn put_back(&self, unit_exists: bool, timeout: Duration) -> String {
        if let Err(err) = self.slot.restore_previous() {
            return format!(
                "putting the previous binary back failed: {}",
                display_error(&err)
            );
        }
        let restored = self.installed_version().await;
        if !unit_exists {
            return format!("rolled back to {restored}");
        }
        match self.restart_and_verify(&restored, timeout).await {
            Ok(()) => format!("rolled back to {restored}, {} active", self.unit()),
            Err(reason) => format!("rolled back to {restored}, but {reason}"),
        }
    }

    /// Restarts the unit, then waits until it is active and the binary
    /// reports `version`, all within `timeout`.
    pub(super) async fn restart_and_verify(
        &self,
        version: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let unit = self.unit();
        let systemctl = Systemctl(&self.tools);
        let deadline = Instant::now() + timeout;
        match systemctl.restart(unit, timeout).await {
            Ok(output) if output.success() => {}
            Ok(output) => {
                return Err(format!(
                    "systemctl restart {unit} failed: {} (its log: `journalctl -u {unit}`)",
                    crate::host::systemd::failure_reason(&output)
                ));
            }
            Err(err) => return Err(display_error(&err)),
        }
        loop {
            match systemctl.active_states(&[unit]).await {
                Ok(states)
                    if states
                        .first()
                        .is_some_and(|s| crate::host::systemd::is_running(s)) =>
                {
                    return self.binary_reports(version).await;
                }
                Ok(states) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{unit} is {} after {}",
                        states.first().map_or("unknown", |s| s.as_str()),
                        humantime::format_duration(timeout)
                    ));
                }
                Err(err) if Instant::now() >= deadline => return Err(display_error(&err)),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Whether `k3s --version` of the installed binary says `version`.
    pub(super) async fn binary_reports(&self, version: &str) -> Result<(), String> {
        let installed = self.installed_version().await;
        if installed == version {
            Ok(())
        } else if installed.is_empty() {
            Err("`k3s --version` does not report a version".to_string())
        } else {
            Err(format!(
                "`k3s --version` reports {installed}, not {version}"
            ))
        }
    }
}

/// Why the checksum file or manifest could not be had, and whether trying
/// again may help.
struct FetchFailure {
    reason: String,
    transient: bool,
}

impl FetchFailure {
    /// A manifest or signature that is not there: with keys set, a refusal.
    fn unsigned(self, version: &str) -> Self {
        FetchFailure {
            reason: format!(
                "refusing {version}: this host installs only signed releases (host.k3s.trusted_keys) \
                 and its signed manifest cannot be had: {}",
                self.reason
            ),
            ..self
        }
    }
}

/// Marks a failure that left the host unchanged as worth another try.
fn retryable(mut result: CommandResult, transient: bool) -> CommandResult {
    result.retryable = transient;
    result
}

fn with_detail(
    result: CommandOutcome,
    message: String,
    previous_version: String,
    rolled_back: bool,
) -> CommandResult {
    CommandResult {
        detail: Some(command_result::Detail::InstallK3s(InstallK3sResult {
            previous_version,
            rolled_back,
            ..Default::default()
        })),
        ..outcome(result, message)
    }
}
