//! When a pod is gone (by UID), and where a drain's time went: wall-clock
//! time per reason ("pdb shop/web", "pod termination"), counted once however
//! many pods wait for the same reason at the same time.

use std::collections::BTreeMap;
use std::time::Duration;

use k3sfleet_proto::v1::WaitTotal;
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// The reason for pods evicted and not yet gone.
pub const TERMINATION: &str = "pod termination";
/// The reason for evictions the API server failed to answer.
pub const API_ERRORS: &str = "api errors";

/// "pdb shop/web": the reason for pods a budget refused.
pub fn budget_reason(pdb: &str) -> String {
    format!("pdb {pdb}")
}

/// Whether the pod with `uid` is gone, given what now carries its name: a
/// pod recreated under the same name (a StatefulSet's) is another pod.
pub fn uid_gone(current: Option<&Pod>, uid: &str) -> bool {
    current.is_none_or(|pod| pod.metadata.uid.as_deref() != Some(uid))
}

#[derive(Debug, Default)]
pub struct WaitClock {
    /// Reasons someone is waiting for now: how many, since when.
    open: BTreeMap<String, (usize, Instant)>,
    closed: BTreeMap<String, Duration>,
}

impl WaitClock {
    /// One more waiter for `reason`.
    pub fn begin(&mut self, reason: &str, now: Instant) {
        let entry = self.open.entry(reason.to_string()).or_insert((0, now));
        entry.0 += 1;
    }

    /// One waiter for `reason` stopped waiting.
    pub fn end(&mut self, reason: &str, now: Instant) {
        let Some((count, since)) = self.open.get_mut(reason) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            let spent = now.saturating_duration_since(*since);
            *self.closed.entry(reason.to_string()).or_default() += spent;
            self.open.remove(reason);
        }
    }

    /// Totals so far, open waits counted up to `now`, by reason.
    pub fn totals(&self, now: Instant) -> Vec<WaitTotal> {
        let mut totals = self.closed.clone();
        for (reason, (_, since)) in &self.open {
            *totals.entry(reason.clone()).or_default() += now.saturating_duration_since(*since);
        }
        totals
            .into_iter()
            .filter(|(_, spent)| !spent.is_zero())
            .map(|(reason, spent)| WaitTotal {
                reason,
                millis: spent.as_millis() as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn totals(clock: &WaitClock, now: Instant) -> Vec<(String, u64)> {
        clock
            .totals(now)
            .into_iter()
            .map(|t| (t.reason, t.millis / 1000))
            .collect()
    }

    #[test]
    fn a_pod_is_gone_when_its_uid_is() {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("old".into());
        assert!(!uid_gone(Some(&pod), "old"));
        assert!(uid_gone(None, "old"));
        pod.metadata.uid = Some("new".into());
        assert!(uid_gone(Some(&pod), "old"), "recreated under the same name");
    }

    #[test]
    fn overlapping_waits_for_one_reason_count_once() {
        let t0 = Instant::now();
        let mut clock = WaitClock::default();
        clock.begin("pdb shop/web", t0);
        clock.begin("pdb shop/web", t0 + secs(1));
        clock.end("pdb shop/web", t0 + secs(3));
        clock.end("pdb shop/web", t0 + secs(4));
        clock.begin(TERMINATION, t0 + secs(4));
        clock.end(TERMINATION, t0 + secs(6));
        // A second spell for the same reason adds up.
        clock.begin("pdb shop/web", t0 + secs(10));
        clock.end("pdb shop/web", t0 + secs(11));
        assert_eq!(
            totals(&clock, t0 + secs(20)),
            [
                ("pdb shop/web".to_string(), 5),
                (TERMINATION.to_string(), 2)
            ]
        );
    }

    #[test]
    fn open_waits_count_up_to_now() {
        let t0 = Instant::now();
        let mut clock = WaitClock::default();
        clock.begin(TERMINATION, t0);
        assert_eq!(totals(&clock, t0 + secs(7)), [(TERMINATION.to_string(), 7)]);
        // Ending what never began is harmless.
        clock.end("pdb x/y", t0 + secs(8));
        assert_eq!(totals(&clock, t0 + secs(8)), [(TERMINATION.to_string(), 8)]);
    }
}
