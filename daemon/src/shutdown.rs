//! Waiting for the signal to stop.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C) and says which.
pub async fn signal_received() -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
