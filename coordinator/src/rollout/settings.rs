//! The engine's tunables, mostly for tests and the demo; the defaults suit
//! real fleets.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How often the engine looks again without being woken.
    pub tick: Duration,
    /// The least time between two looks (agents' reports wake it often).
    pub min_round: Duration,
    /// How long a command waits for its agent to (re)connect before it fails.
    pub agent_wait: Duration,
    /// How long pre-checks may wait for health before the node fails.
    pub pre_check_wait: Duration,
    /// Base of the backoff between retries of a step that failed transiently.
    pub retry_base: Duration,
    /// Transient failures of one step before the node fails.
    pub step_retries: u32,
    /// How often the alerts source is asked.
    pub alerts_poll: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            tick: Duration::from_secs(1),
            min_round: Duration::from_millis(200),
            agent_wait: Duration::from_secs(600),
            pre_check_wait: Duration::from_secs(120),
            retry_base: Duration::from_secs(2),
            step_retries: 4,
            alerts_poll: Duration::from_secs(5),
        }
    }
}

impl EngineSettings {
    /// The wait before retry number `retries` (1-based): doubling from the
    /// base, at most 16 times it.
    pub fn backoff(&self, retries: u32) -> Duration {
        crate::drain::RetryPolicy {
            first: self.retry_base,
            max: self.retry_base.saturating_mul(16),
        }
        .delay(retries)
    }
}
