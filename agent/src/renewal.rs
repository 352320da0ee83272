//! Keeping the agent's certificate fresh: renew at two thirds of its life over
//! mutual TLS with the certificate still held, then reconnect so the session
//! runs on the new one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k3sfleet_pki::{CERT_BACKDATE, DialTarget, PeerIdentity, TlsFiles};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::session::display_error;

/// Renewal starts this far into a certificate's life.
const RENEW_AT_FRACTION: f64 = 2.0 / 3.0;
/// Retries after a failed renewal are spaced this far apart at most.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// When to renew a certificate valid from `not_before` to `not_after` (Unix
/// seconds). Its life counts from issuance: certificates are backdated a few
/// minutes for clock skew, and that margin is not life to spend.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let issued = (not_before + CERT_BACKDATE.as_secs() as i64).min(not_after);
    issued + ((not_after - issued) as f64 * RENEW_AT_FRACTION) as i64
}

/// How long to wait before retrying a failed renewal: a tenth of the time
/// left, between 1 s and 5 min.
pub fn retry_delay(now: i64, not_after: i64) -> Duration {
    let left = Duration::from_secs((not_after - now).max(0) as u64);
    (left / 10).clamp(Duration::from_secs(1), MAX_RETRY)
}

/// Renews the certificate whenever it is due, until `stop`; wakes `reconnect`
/// after each renewal.
pub async fn keep_renewed(
    config: Arc<AgentConfig>,
    reconnect: Arc<Notify>,
    stop: CancellationToken,
) {
    let files = TlsFiles {
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let mut target = DialTarget::new(config.coordinator.address.clone());
    target.server_name = config.coordinator.server_name.clone();
    loop {
        let identity = match current_identity(&files) {
            Ok(identity) => identity,
            Err(err) => {
                tracing::error!(
                    error = err,
                    "cannot read the agent certificate; not renewing"
                );
                return;
            }
        };
        let now = unix_now();
        let due = renew_at(identity.not_before, identity.not_after);
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs((due - now) as u64)) => {}
                _ = stop.cancelled() => return,
            }
        }
        if unix_now() >= identity.not_after {
            tracing::error!(
                "the agent certificate has expired and cannot renew itself; enroll the host again with a new token"
            );
            return;
        }
        match k3sfleet_pki::renew(&target, &files, &identity.name).await {
            Ok(renewal) => {
                tracing::info!(
                    serial = renewal.serial,
                    "certificate renewed; reconnecting with it"
                );
                reconnect.notify_one();
            }
            Err(err) => {
                let delay = retry_delay(unix_now(), identity.not_after);
                tracing::warn!(error = %display_error(&err), retry_in = ?delay, "certificate renewal failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

fn current_identity(files: &TlsFiles) -> Result<PeerIdentity, String> {
    let cert = k3sfleet_pki::read_certificates(&files.cert)
        .map_err(|err| err.to_string())?
        .remove(0);
    PeerIdentity::from_der(&cert).map_err(|err| err.to_string())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_life_since_issuance() {
        let backdate = CERT_BACKDATE.as_secs() as i64;
        assert_eq!(renew_at(-backdate, 30 * 86_400), 20 * 86_400);
        assert_eq!(renew_at(1_000 - backdate, 1_300), 1_200);
        // A certificate shorter than the backdating is due at once.
        assert_eq!(renew_at(0, 10), 10);
    }

    #[test]
    fn retries_are_spaced_by_the_time_left() {
        assert_eq!(retry_delay(0, 100), Duration::from_secs(10));
        assert_eq!(retry_delay(0, 5), Duration::from_secs(1));
        assert_eq!(retry_delay(0, 86_400), MAX_RETRY);
        assert_eq!(retry_delay(200, 100), Duration::from_secs(1));
    }
}
