//! Cluster time versus wall time.
//!
//! Scenario delays are written in "cluster seconds"; a time-scale factor makes them run faster
//! in wall time. Object timestamps (creationTimestamp, deletionTimestamp, heartbeats) are wall
//! clock so that clients computing ages see sane values.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// Cluster seconds that pass per wall-clock second (10.0 = ten times faster than real).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(f64);

impl TimeScale {
    pub const REAL_TIME: TimeScale = TimeScale(1.0);

    /// `None` unless the factor is finite and positive.
    pub fn new(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor > 0.0).then_some(Self(factor))
    }

    pub fn factor(self) -> f64 {
        self.0
    }

    /// The wall-clock duration of `cluster_seconds`.
    pub fn wall(self, cluster_seconds: f64) -> Duration {
        Duration::from_secs_f64((cluster_seconds.max(0.0)) / self.0)
    }
}

/// The moment a decision is made: a monotonic instant for deadlines and the wall clock for
/// timestamps written into objects. Passed into decisions instead of reading clocks inside.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: Timestamp,
}

impl Now {
    pub fn capture() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Kubernetes timestamps have whole-second precision.
        let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
        let wall = Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH);
        Self {
            instant: Instant::now(),
            wall,
        }
    }

    pub fn time(&self) -> Time {
        Time(self.wall)
    }

    /// The wall time `after` from now, for timestamps such as deletionTimestamp.
    pub fn wall_after(&self, after: Duration) -> Time {
        let signed = SignedDuration::try_from(after).unwrap_or(SignedDuration::ZERO);
        Time(self.wall.checked_add(signed).unwrap_or(self.wall))
    }

    /// Moves both clocks forward, for unit tests of time-based rules.
    pub fn advanced(&self, by: Duration) -> Self {
        Self {
            instant: self.instant + by,
            wall: self.wall_after(by).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_divides_cluster_seconds() {
        let scale = TimeScale::new(10.0).unwrap();
        assert_eq!(scale.wall(5.0), Duration::from_millis(500));
        assert_eq!(scale.wall(-1.0), Duration::ZERO);
    }

    #[test]
    fn scale_rejects_nonsense() {
        assert!(TimeScale::new(0.0).is_none());
        assert!(TimeScale::new(-2.0).is_none());
        assert!(TimeScale::new(f64::NAN).is_none());
    }
}
