//! The load generator: thousands of simulated agents, each with its own
//! certificate and its own mTLS stream, speaking the agent protocol to a real
//! coordinator. Used by the load test, by `k3sfleet-loadgen run` against any
//! coordinator, and by the fleet-scale benchmark (`k3sfleet-loadgen bench`).

mod agent;
pub mod bench;
pub mod certs;
pub mod connect;
pub mod harness;
pub mod probe;
mod proc_stats;
mod report;
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use agent::ProbeRequest;
pub use certs::{AgentIdentity, Issued, agent_names, issue_agents};
pub use connect::Target;
pub use proc_stats::ProcessStats;
pub use stats::{Snapshot, Stats};

use agent::{Shared, SimAgent};

/// What to simulate.
#[derive(Debug)]
pub struct LoadSpec {
    pub target: Target,
    pub identities: Vec<AgentIdentity>,
    /// How often each agent reports (the real agent's `report.interval`).
    pub interval: Duration,
    /// The real agent's `coordinator.max_reconnect_delay` (default 30 s).
    pub max_reconnect_delay: Duration,
    pub k3s_version: String,
    /// Agents start at random moments within this long, as hosts boot.
    pub ramp: Duration,
    /// How many agents answer the latency probe (the first ones).
    pub probes: usize,
}

/// A running simulated fleet.
#[derive(Debug)]
pub struct LoadFleet {
    shared: Arc<Shared>,
    names: Vec<String>,
    probes: Vec<mpsc::Sender<ProbeRequest>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl LoadFleet {
    /// Starts every agent (inside a Tokio runtime).
    pub fn start(spec: LoadSpec) -> LoadFleet {
        let shared = Arc::new(Shared {
            target: spec.target,
            interval: spec.interval,
            max_reconnect_delay: spec.max_reconnect_delay,
            k3s_version: spec.k3s_version,
            stats: Stats::default(),
        });
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut probes = Vec::new();
        let mut names = Vec::with_capacity(spec.identities.len());
        for (index, identity) in spec.identities.into_iter().enumerate() {
            let probe = (index < spec.probes).then(|| {
                let (sender, receiver) = mpsc::channel(1);
                probes.push(sender);
                receiver
            });
            names.push(identity.name.clone());
            let agent = SimAgent {
                index,
                identity,
                probe,
            };
            let delay = spec.ramp.mul_f64(rand::random::<f64>());
            tasks.spawn(agent.run(shared.clone(), delay, stop.clone()));
        }
        LoadFleet {
            shared,
            names,
            probes,
            stop,
            tasks,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Waits until every agent holds a session; returns how long that took,
    /// or `None` at the timeout.
    pub async fn wait_all_connected(&self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.stats().connected() == self.len() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until no agent holds a session (after a coordinator stopped).
    pub async fn wait_all_disconnected(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.stats().connected() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Makes probe agent `probe` send a report now; returns its node name,
    /// the report's sequence and when it went out. `None` while that agent has
    /// no session.
    pub async fn send_probe_report(&self, probe: usize) -> Option<(String, u64, Instant)> {
        let (reply, answer) = oneshot::channel();
        self.probes.get(probe)?.send(reply).await.ok()?;
        let (sequence, sent) = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .ok()?
            .ok()?;
        Some((self.names[probe].clone(), sequence, sent))
    }

    pub fn probe_count(&self) -> usize {
        self.probes.len()
    }

    /// Ends every session and stops the agents.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Raises this process's open-file limit to its hard limit (each agent holds
/// one socket); returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
