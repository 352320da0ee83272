//! Whether the coordinator can do its work: what gRPC health, `/ready` and
//! the systemd watchdog report.
//!
//! Ready means the database takes a write (a real commit, every few seconds)
//! and each main loop (the accept loop, the report flusher, the rollout
//! engine) has run recently. The watchdog is fed only while the loops run:
//! systemd restarts a coordinator whose loops are wedged, not one whose
//! database is locked or whose disk is full (a restart would not help; it
//! says it is not ready, and why).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::heartbeat::Heartbeat;
use crate::store::Store;

/// How often the database is written to and the loops looked at.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe write that takes longer (the store waits 5 s for a lock) counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Loop {
    name: &'static str,
    max_silence: Duration,
    heartbeat: Arc<Heartbeat>,
}

#[derive(Debug, Default)]
pub struct Readiness {
    loops: Mutex<Vec<Loop>>,
    /// Why the last probe write failed, if it did.
    database: Mutex<Option<String>>,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Arc::new(Readiness::default())
    }

    /// A heartbeat for the loop `name` (as the problems name it), which
    /// counts as stuck when it has not beaten for `max_silence`.
    pub fn register(&self, name: &'static str, max_silence: Duration) -> Arc<Heartbeat> {
        let heartbeat = Heartbeat::new();
        lock(&self.loops).push(Loop {
            name,
            max_silence,
            heartbeat: heartbeat.clone(),
        });
        heartbeat
    }

    /// The loops that have not run for longer than they may.
    fn stuck_loops(&self) -> Vec<String> {
        lock(&self.loops)
            .iter()
            .filter_map(|l| {
                let silent = l.heartbeat.silent_for();
                (silent > l.max_silence)
                    .then(|| format!("the {} has not run for {} s", l.name, silent.as_secs()))
            })
            .collect()
    }

    /// Every loop has run recently: what the watchdog is fed on.
    pub fn loops_running(&self) -> bool {
        self.stuck_loops().is_empty()
    }

    /// Why the coordinator is not ready; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.stuck_loops();
        if let Some(err) = lock(&self.database).clone() {
            problems.push(format!("the database does not take writes: {err}"));
        }
        problems
    }

    async fn probe_database(&self, store: &Store) {
        let result = match tokio::time::timeout(PROBE_TIMEOUT, store.record_liveness()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(error_chain(&err)),
            Err(_) => Some(format!(
                "a write took longer than {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        };
        *lock(&self.database) = result;
    }

    /// Probes the database and sets `services` (and the server as a whole,
    /// "") serving or not serving, for as long as the task runs.
    pub fn supervise(
        self: &Arc<Self>,
        store: Store,
        health: HealthReporter,
        services: Vec<&'static str>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut was_ready = None;
            let mut ticker = tokio::time::interval(PROBE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                this.probe_database(&store).await;
                let problems = this.problems();
                let ready = problems.is_empty();
                if was_ready != Some(ready) {
                    if ready {
                        tracing::info!("ready");
                    } else {
                        tracing::warn!(problems = %problems.join("; "), "not ready");
                    }
                    let status = if ready {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for service in std::iter::once("").chain(services.iter().copied()) {
                        health.set_service_status(service, status).await;
                    }
                    was_ready = Some(ready);
                }
            }
        })
    }
}

/// "database query failed: database is locked".
fn error_chain(err: &dyn std::error::Error) -> String {
    std::iter::successors(Some(err), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_named_and_stops_the_watchdog() {
        let readiness = Readiness::new();
        let flusher = readiness.register("report flusher", Duration::from_millis(50));
        let accept = readiness.register("accept loop", Duration::from_secs(60));
        flusher.beat();
        accept.beat();
        assert!(readiness.loops_running());
        assert!(readiness.problems().is_empty());
        std::thread::sleep(Duration::from_millis(120));
        accept.beat();
        assert!(!readiness.loops_running());
        assert_eq!(
            readiness.problems(),
            ["the report flusher has not run for 0 s"]
        );
        flusher.beat();
        assert!(readiness.loops_running());
    }

    #[tokio::test]
    async fn a_database_that_takes_writes_is_ready_and_one_that_is_locked_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let readiness = Readiness::new();
        readiness.probe_database(&store).await;
        assert!(
            readiness.problems().is_empty(),
            "{:?}",
            readiness.problems()
        );

        // Another process holding the write lock (an operator's sqlite3 left
        // in a transaction): the probe waits out the store's busy timeout.
        let other =
            rusqlite::Connection::open(dir.path().join(crate::store::DATABASE_FILE)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        readiness.probe_database(&store).await;
        let problems = readiness.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("the database does not take writes:")
                && problems[0].contains("locked"),
            "{problems:?}"
        );
        // Loops are fine: the watchdog keeps being fed.
        assert!(readiness.loops_running());

        other.execute_batch("ROLLBACK").unwrap();
        readiness.probe_database(&store).await;
        assert!(
            readiness.problems().is_empty(),
            "{:?}",
            readiness.problems()
        );
    }
}
