//! A main loop's proof of life, which readiness and the watchdog read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Beaten by a loop on every turn.
#[derive(Debug)]
pub struct Heartbeat {
    since: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat whose silence counts from now.
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn beat(&self) {
        self.last_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// How long since the last beat (or since it was made).
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.elapsed_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
