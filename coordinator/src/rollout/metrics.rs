//! What rollouts count as they go: step durations and drain waits by
//! reason. The gauges (phase, nodes per step, cordons) are read from the
//! rollout's state at scrape time instead; see `crate::metrics`.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{CounterVec, HistogramOpts, HistogramVec, Opts};

use super::state::Step;

#[derive(Debug, Clone)]
pub struct RolloutMetrics {
    step_seconds: HistogramVec,
    drain_wait_seconds: CounterVec,
}

/// From a quick cordon to a drain that waits out a slow StatefulSet.
const STEP_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

impl Default for RolloutMetrics {
    fn default() -> Self {
        RolloutMetrics {
            step_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "k3sfleet_rollout_step_duration_seconds",
                    "Time each finished rollout step took, by step.",
                )
                .buckets(STEP_BUCKETS.to_vec()),
                &["step"],
            )
            .expect("valid histogram"),
            drain_wait_seconds: CounterVec::new(
                Opts::new(
                    "k3sfleet_drain_wait_seconds_total",
                    "Time rollout drains spent waiting, by reason (a PDB, pod termination, ...).",
                ),
                &["reason"],
            )
            .expect("valid counter"),
        }
    }
}

impl RolloutMetrics {
    /// Records a finished step: how long it took and, for a drain, what it waited on.
    pub fn step_finished(&self, step: Step, took: Duration, waits: &[(String, u64)]) {
        self.step_seconds
            .with_label_values(&[step.as_str()])
            .observe(took.as_secs_f64());
        if step == Step::Drain {
            for (reason, millis) in waits {
                self.drain_wait_seconds
                    .with_label_values(&[reason.as_str()])
                    .inc_by(*millis as f64 / 1000.0);
            }
        }
    }

    pub fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.step_seconds.collect();
        families.extend(self.drain_wait_seconds.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_waits_are_counted_by_reason_and_other_steps_only_timed() {
        let metrics = RolloutMetrics::default();
        let waits = vec![
            ("pdb shop/web".to_string(), 1500),
            ("pod termination".to_string(), 500),
        ];
        metrics.step_finished(Step::Drain, Duration::from_secs(2), &waits);
        metrics.step_finished(
            Step::Settle,
            Duration::from_secs(30),
            &[("settle".into(), 30_000)],
        );

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&metrics.collect())
            .unwrap();
        assert!(
            text.contains("k3sfleet_drain_wait_seconds_total{reason=\"pdb shop/web\"} 1.5"),
            "{text}"
        );
        assert!(!text.contains("reason=\"settle\""), "{text}");
        assert!(
            text.contains("k3sfleet_rollout_step_duration_seconds_count{step=\"settle\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("k3sfleet_rollout_step_duration_seconds_sum{step=\"drain\"} 2"),
            "{text}"
        );
    }
}
