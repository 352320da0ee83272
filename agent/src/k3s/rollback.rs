//! Going back to the previous K3s binary on request.
//!
//! The two binaries are exchanged atomically, so a rollback can be undone by
//! another; if the previous binary does not come up healthy, the exchange is
//! reversed and the command fails with the host as it was.

use k3sfleet_proto::v1::{CommandOutcome, CommandResult, InstallK3sResult, command_result};

use super::{K3sManager, outcome};
use crate::duties::ProgressSink;
use crate::session::display_error;

impl K3sManager {
    pub async fn rollback(&self, progress: &ProgressSink) -> CommandResult {
        let _busy = self.wait_until_idle(progress).await;
        let before = self.state().await;
        if !self.slot.has_previous() {
            return outcome(
                CommandOutcome::Failed,
                format!(
                    "there is no previous K3s binary ({}) to roll back to",
                    self.slot.previous().display()
                ),
            );
        }
        let target = before.previous_version.clone();
        progress.step(
            "swap",
            format!(
                "swapping {} ({}) with the previous binary ({})",
                self.slot.target().display(),
                shown(&before.installed_version),
                shown(&target)
            ),
        );
        if let Err(err) = self.slot.exchange() {
            return outcome(CommandOutcome::Failed, display_error(&err));
        }
        self.intent.clear();
        let timeout = self.config.health_timeout;
        progress.step("restart", format!("restarting {}", self.unit()));
        let result = match self.restart_and_verify(&target, timeout).await {
            Ok(()) => outcome(
                CommandOutcome::Succeeded,
                format!(
                    "rolled back from {} to {}; {} active",
                    shown(&before.installed_version),
                    shown(&target),
                    self.unit()
                ),
            ),
            Err(reason) => {
                progress.step("undo", format!("{reason}; swapping back"));
                let undo = match self.slot.exchange() {
                    Err(err) => format!("swapping back failed: {}", display_error(&err)),
                    Ok(()) => match self
                        .restart_and_verify(&before.installed_version, timeout)
                        .await
                    {
                        Ok(()) => format!(
                            "swapped back to {}, {} active",
                            shown(&before.installed_version),
                            self.unit()
                        ),
                        Err(again) => format!(
                            "swapped back to {}, but {again}",
                            shown(&before.installed_version)
                        ),
                    },
                };
                outcome(
                    CommandOutcome::Failed,
                    format!(
                        "{} did not come up healthy: {reason}; {undo}",
                        shown(&target)
                    ),
                )
            }
        };
        let after = self.state().await;
        CommandResult {
            detail: Some(command_result::Detail::InstallK3s(InstallK3sResult {
                previous_version: before.installed_version,
                installed_version: after.installed_version,
                sha256: after.binary_sha256,
                rolled_back: result.outcome == CommandOutcome::Succeeded as i32,
            })),
            ..result
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
