//! Counters of a simulated fleet, read while it runs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Agents holding a welcomed session right now.
    pub connected: AtomicUsize,
    /// Sessions welcomed since the start.
    pub sessions: AtomicU64,
    /// Sessions that failed or ended (dial, handshake, refused, cut).
    pub failed_attempts: AtomicU64,
    pub reports: AtomicU64,
    pub commands: AtomicU64,
}

impl Stats {
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected(),
            sessions: self.sessions.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            reports: self.reports.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub connected: usize,
    pub sessions: u64,
    pub failed_attempts: u64,
    pub reports: u64,
    pub commands: u64,
}

/// Counts one connected agent for as long as it lives.
pub struct ConnectedGuard<'a>(&'a Stats);

impl<'a> ConnectedGuard<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        stats.connected.fetch_add(1, Ordering::Relaxed);
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(stats)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}
