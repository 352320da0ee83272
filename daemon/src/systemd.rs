//! systemd readiness and watchdog (Type=notify units).
//!
//! All calls are no-ops when not started by systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is ready, with a status line for `systemctl status`.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line shown by `systemctl status`.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// If systemd asked for watchdog pings (WatchdogSec=), pings at half the
/// interval for as long as the returned task runs and `alive` says the
/// daemon's main loops make progress. The task runs on the async runtime, so
/// a wedged runtime stops the pings too, and systemd restarts us.
pub fn spawn_watchdog(
    alive: impl Fn() -> bool + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let timeout = sd_notify::watchdog_enabled().filter(|t| !t.is_zero())?;
    let every: Duration = timeout / 2;
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        let mut was_alive = true;
        loop {
            ticker.tick().await;
            let alive = alive();
            if alive {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            } else if was_alive {
                tracing::error!(
                    "a main loop has stopped making progress: no more watchdog pings, systemd will restart the service"
                );
            }
            was_alive = alive;
        }
    }))
}
