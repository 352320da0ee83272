//! At start-up: finishing or undoing the install a previous run left half
//! done, when the agent or the whole host died between recording the intent
//! and verifying the restarted service (a crash, a kill, a power cut).
//!
//! The intent names the binary the install was putting in place and the one
//! it replaced, so the binary found now tells how far the install got:
//! - the new binary (its digest is the release's: whole): the swap happened.
//!   The service must prove itself on it, as at the end of an install, or
//!   the kept previous binary comes back;
//! - the previous binary: the install stopped before the swap and changed
//!   nothing; only the record goes;
//! - anything else: someone replaced the binary since; it is not the
//!   agent's to undo, and the record goes with a warning.
//!
//! It runs before the session can deliver commands (it holds the K3s lock),
//! so a re-sent install finds the host settled: a no-op if it was finished.

use std::sync::Arc;

use super::intent::InstallIntent;
use super::{K3sManager, short};
use crate::duties::ProgressSink;
use crate::session::display_error;

/// What settling found and did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The swap happened; the service came up on the new binary (or did not,
    /// and the previous binary was put back): the install's own message.
    AfterSwap { succeeded: bool, message: String },
    /// The install stopped before the swap; the binary is the one before it.
    BeforeSwap { message: String },
    /// The binary is neither: left alone.
    Foreign { message: String },
}

impl Settled {
    pub fn message(&self) -> &str {
        match self {
            Settled::AfterSwap { message, .. }
            | Settled::BeforeSwap { message }
            | Settled::Foreign { message } => message,
        }
    }
}

impl K3sManager {
    /// Starts settling an interrupted install, if one is recorded. Takes the
    /// K3s lock before returning, so commands wait for it. Call inside the
    /// runtime, before the session starts.
    pub fn spawn_settle(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<Settled>> {
        let pending = self.intent.read()?;
        let guard = self.busy.clone().try_lock_owned().ok()?;
        let manager = self.clone();
        Some(tokio::spawn(async move {
            let settled = manager.settle(pending).await;
            drop(guard);
            match &settled {
                Settled::AfterSwap {
                    succeeded: true,
                    message,
                }
                | Settled::BeforeSwap { message } => {
                    tracing::info!("settled an interrupted K3s install: {message}")
                }
                Settled::AfterSwap { message, .. } | Settled::Foreign { message } => {
                    tracing::warn!("settled an interrupted K3s install: {message}")
                }
            }
            settled
        }))
    }

    async fn settle(&self, pending: InstallIntent) -> Settled {
        let version = &pending.version;
        let installed = match self.slot.sha256_of(self.slot.target()).await {
            Ok(sha) => sha.unwrap_or_default(),
            Err(err) => {
                return Settled::Foreign {
                    message: format!(
                        "an install of {version} was interrupted, and the binary cannot be read: {}; \
                         the record stays for the next install",
                        display_error(&err)
                    ),
                };
            }
        };
        if installed == pending.sha256 {
            let previous_version = self.describe(self.slot.previous()).await.0;
            let result = self
                .activate(
                    version,
                    &previous_version,
                    self.config.health_timeout,
                    true,
                    &ProgressSink::discard(),
                )
                .await;
            let succeeded = result.outcome == k3sfleet_proto::v1::CommandOutcome::Succeeded as i32;
            return Settled::AfterSwap {
                succeeded,
                message: format!(
                    "an install of {version} was interrupted after the swap (the binary is whole: sha256 {}): {}",
                    short(&installed),
                    result.message
                ),
            };
        }
        self.intent.clear();
        let shown = if installed.is_empty() {
            "no binary".to_string()
        } else {
            format!("sha256 {}", short(&installed))
        };
        match &pending.previous_sha256 {
            // Older records do not say; a binary that is not the new one was
            // not swapped in by this install.
            None => Settled::BeforeSwap {
                message: format!(
                    "an install of {version} was interrupted before the swap: the binary ({shown}) was not changed"
                ),
            },
            Some(previous) if *previous == installed => Settled::BeforeSwap {
                message: format!(
                    "an install of {version} was interrupted before the swap: the binary is the one before it ({shown}), unchanged"
                ),
            },
            Some(previous) => Settled::Foreign {
                message: format!(
                    "an install of {version} was interrupted, and the binary now ({shown}) is neither {version} \
                     (sha256 {}) nor the one before it ({}): something else replaced it; left as it is",
                    short(&pending.sha256),
                    if previous.is_empty() {
                        "none".to_string()
                    } else {
                        format!("sha256 {}", short(previous))
                    }
                ),
            },
        }
    }
}
