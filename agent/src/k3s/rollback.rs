//! Going back to the binary the node ran before an upgrade, on request.
//!
//! Declarative: the request names the binary to run (its version and, when
//! the coordinator knows it, its SHA-256), not "swap with the previous one".
//! So a rollback interrupted after the swap and run again finds that binary
//! in place and only makes sure the service runs it; it never swaps back to
//! the failed version. If the binary does not come up healthy, the exchange
//! is reversed and the command fails with the host as it was.

use k3sfleet_proto::v1::{
    CommandOutcome, CommandResult, InstallK3sResult, RollbackK3s, command_result,
};

use super::{K3sManager, outcome};
use crate::duties::ProgressSink;
use crate::host::systemd::Systemctl;
use crate::session::display_error;

/// Which binary a rollback wants, and how to recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    version: String,
    sha256: String,
}

impl Wanted {
    fn matches(&self, version: &str, sha256: &str) -> bool {
        if !self.sha256.is_empty() {
            return sha256.eq_ignore_ascii_case(&self.sha256);
        }
        !self.version.is_empty() && version == self.version
    }

    fn describe(&self) -> String {
        match (self.version.as_str(), self.sha256.as_str()) {
            (version, "") => version.to_string(),
            ("", sha) => format!("the binary with SHA-256 {}", super::short(sha)),
            (version, sha) => format!("{version} (SHA-256 {})", super::short(sha)),
        }
    }
}

impl K3sManager {
    pub async fn rollback(&self, request: RollbackK3s, progress: &ProgressSink) -> CommandResult {
        let wanted = Wanted {
            version: request.version.trim().to_string(),
            sha256: request.sha256.trim().to_ascii_lowercase(),
        };
        if wanted.version.is_empty() && wanted.sha256.is_empty() {
            return outcome(
                CommandOutcome::Rejected,
                "a rollback must name the version (and digest) to return to",
            );
        }
        let _busy = self.wait_until_idle(progress).await;
        let before = self.state().await;
        let timeout = self.config.health_timeout;
        let result = if wanted.matches(&before.installed_version, &before.binary_sha256) {
            if let Err(reason) =
                self.check_signed(&wanted, &before.installed_version, &before.binary_sha256)
            {
                return outcome(CommandOutcome::Failed, reason);
            }
            self.intent.clear();
            self.ensure_running(&wanted, &before.installed_version, progress)
                .await
        } else {
            let (previous_version, previous_sha) = self.describe(self.slot.previous()).await;
            if !self.slot.has_previous() || !wanted.matches(&previous_version, &previous_sha) {
                return outcome(
                    CommandOutcome::Failed,
                    format!(
                        "cannot roll back to {}: {} holds {}, and the kept previous binary {} is {}",
                        wanted.describe(),
                        self.slot.target().display(),
                        shown(&before.installed_version),
                        self.slot.previous().display(),
                        if self.slot.has_previous() {
                            shown(&previous_version).to_string()
                        } else {
                            "missing".to_string()
                        }
                    ),
                );
            }
            if let Err(reason) = self.check_signed(&wanted, &previous_version, &previous_sha) {
                return outcome(CommandOutcome::Failed, reason);
            }
            self.swap_back(
                &before.installed_version,
                &previous_version,
                timeout,
                progress,
            )
            .await
        };
        let after = self.state().await;
        CommandResult {
            detail: Some(command_result::Detail::InstallK3s(InstallK3sResult {
                previous_version: before.installed_version,
                installed_version: after.installed_version,
                sha256: after.binary_sha256,
                rolled_back: result.outcome != CommandOutcome::Failed as i32,
            })),
            ..result
        }
    }

    /// With trusted keys, the binary a rollback returns to (`version` as it
    /// reports itself, `sha256`) must match the signed manifest of its
    /// version that an install kept.
    fn check_signed(&self, wanted: &Wanted, version: &str, sha256: &str) -> Result<(), String> {
        if !self.trust.keys.enabled() {
            return Ok(());
        }
        let refused = |reason: String| {
            format!(
                "refusing to roll back to {}: {reason}; nothing was changed",
                wanted.describe()
            )
        };
        if version.is_empty() {
            return Err(refused(
                "the binary does not report its version, so no signed manifest can vouch for it"
                    .into(),
            ));
        }
        let assets = super::release::assets_for(&self.arch).ok_or_else(|| {
            refused(format!(
                "K3s publishes no binary for architecture {}",
                self.arch
            ))
        })?;
        let verified = self.trust.recall(version).map_err(refused)?;
        verified
            .check(&self.arch, assets.binary, None, sha256)
            .map_err(|err| refused(err.to_string()))
    }

    /// The wanted binary is in place: a no-op if its service runs it,
    /// otherwise restart and verify (a rollback cut off after its swap).
    async fn ensure_running(
        &self,
        wanted: &Wanted,
        installed: &str,
        progress: &ProgressSink,
    ) -> CommandResult {
        let active = Systemctl(&self.tools)
            .is_active(self.unit())
            .await
            .unwrap_or(false);
        if active && self.binary_reports(installed).await.is_ok() {
            return outcome(
                CommandOutcome::NoOp,
                format!(
                    "{} is in place and {} runs it already",
                    wanted.describe(),
                    self.unit()
                ),
            );
        }
        progress.step(
            "restart",
            format!(
                "{} is in place; restarting {}",
                wanted.describe(),
                self.unit()
            ),
        );
        match self
            .restart_and_verify(installed, self.config.health_timeout)
            .await
        {
            Ok(()) => outcome(
                CommandOutcome::Succeeded,
                format!("back on {}; {} active", shown(installed), self.unit()),
            ),
            Err(reason) => outcome(
                CommandOutcome::Failed,
                format!(
                    "{} is in place but does not come up healthy: {reason}",
                    shown(installed)
                ),
            ),
        }
    }

    /// Exchanges the current binary with the kept previous one (the wanted
    /// one), restarts and verifies; undoes the exchange if it is unhealthy.
    async fn swap_back(
        &self,
        current: &str,
        target: &str,
        timeout: std::time::Duration,
        progress: &ProgressSink,
    ) -> CommandResult {
        progress.step(
            "swap",
            format!(
                "swapping {} ({}) with the previous binary ({})",
                self.slot.target().display(),
                shown(current),
                shown(target)
            ),
        );
        if let Err(err) = self.slot.exchange() {
            return outcome(CommandOutcome::Failed, display_error(&err));
        }
        self.intent.clear();
        progress.step("restart", format!("restarting {}", self.unit()));
        match self.restart_and_verify(target, timeout).await {
            Ok(()) => outcome(
                CommandOutcome::Succeeded,
                format!(
                    "rolled back from {} to {}; {} active",
                    shown(current),
                    shown(target),
                    self.unit()
                ),
            ),
            Err(reason) => {
                progress.step("undo", format!("{reason}; swapping back"));
                let undo = match self.slot.exchange() {
                    Err(err) => format!("swapping back failed: {}", display_error(&err)),
                    Ok(()) => match self.restart_and_verify(current, timeout).await {
                        Ok(()) => {
                            format!("swapped back to {}, {} active", shown(current), self.unit())
                        }
                        Err(again) => format!("swapped back to {}, but {again}", shown(current)),
                    },
                };
                outcome(
                    CommandOutcome::Failed,
                    format!(
                        "{} did not come up healthy: {reason}; {undo}",
                        shown(target)
                    ),
                )
            }
        }
    }
}

fn shown(version: &str) -> &str {
    if version.is_empty() {
        "an unknown version"
    } else {
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_decides_when_known_else_the_version() {
        let by_sha = Wanted {
            version: "v1.31.4+k3s1".into(),
            sha256: "ab".repeat(32),
        };
        assert!(by_sha.matches("v1.31.5+k3s1", &"AB".repeat(32)));
        assert!(!by_sha.matches("v1.31.4+k3s1", &"cd".repeat(32)));
        let by_version = Wanted {
            version: "v1.31.4+k3s1".into(),
            sha256: String::new(),
        };
        assert!(by_version.matches("v1.31.4+k3s1", "anything"));
        assert!(!by_version.matches("v1.31.5+k3s1", "anything"));
    }
}
