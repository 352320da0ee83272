//! Enrollment at start (`[host.tailscale.enroll]`): the same `up` as the
//! command, from the config, retried while the control server cannot be
//! reached. Idempotent, so every restart of the agent runs it and a node
//! already enrolled so is left alone.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use k3sfleet_proto::v1::{CommandOutcome, CommandResult, TailscaleUp};
use tokio_util::sync::CancellationToken;

use super::{EnrollConfig, Tailscale};
use crate::duties::ProgressSink;
use crate::session::Backoff;

/// The longest wait between attempts while the control server is away
/// (the session's jittered backoff, so a fleet does not retry in step).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// The command `[host.tailscale.enroll]` stands for; `Err` when the key
/// file cannot be used (never with the key in it).
pub fn request(config: &EnrollConfig, node_name: &str) -> Result<TailscaleUp, String> {
    let path = &config.auth_key_file;
    let metadata = std::fs::metadata(path)
        .map_err(|err| format!("cannot read the auth key file {}: {err}", path.display()))?;
    if metadata.mode() & 0o077 != 0 {
        return Err(format!(
            "the auth key file {} is readable by others (mode {:o}): make it 0600",
            path.display(),
            metadata.mode() & 0o777
        ));
    }
    let auth_key = k3sfleet_daemon::secret::read_secret(path, "Tailscale auth key")
        .map_err(|err| crate::session::display_error(&err))?;
    Ok(TailscaleUp {
        auth_key,
        hostname: config
            .hostname
            .clone()
            .unwrap_or_else(|| node_name.to_string()),
        advertise_tags: config.tags.clone(),
        login_server: config.login_server.clone().unwrap_or_default(),
        extra_flags: config.flags.clone(),
    })
}

/// Runs the configured enrollment until it succeeds, is a no-op, fails for
/// good, or `stop` is cancelled; `after_attempt` runs after each attempt
/// (the agent observes the host again, so the next report shows it).
pub async fn run<F>(
    tailscale: &Tailscale,
    node_name: &str,
    stop: &CancellationToken,
    after_attempt: impl Fn() -> F,
) -> Option<CommandResult>
where
    F: std::future::Future<Output = ()>,
{
    let config = tailscale.config().enroll.clone()?;
    let mut backoff = Backoff::new(MAX_RETRY_DELAY);
    loop {
        let request = match request(&config, node_name) {
            Ok(request) => request,
            Err(reason) => {
                tracing::error!("Tailscale enrollment at start: {reason}");
                return None;
            }
        };
        let result = tailscale.up(request, &ProgressSink::discard()).await;
        after_attempt().await;
        let outcome =
            CommandOutcome::try_from(result.outcome).unwrap_or(CommandOutcome::Unspecified);
        match outcome {
            CommandOutcome::Succeeded | CommandOutcome::NoOp => {
                tracing::info!("Tailscale enrollment at start: {}", result.message);
                return Some(result);
            }
            _ if result.retryable => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    retry_in = %humantime::format_duration(delay),
                    "Tailscale enrollment at start: {}",
                    result.message
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Some(result),
                }
            }
            _ => {
                tracing::error!("Tailscale enrollment at start: {}", result.message);
                return Some(result);
            }
        }
    }
}
