//! Where each pod of a running drain stands, and the sentence that explains a
//! drain that ran out of time: "blocked by PDB shop/web for 5m0s (2/3 healthy)".

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::plan::count;

/// One pod's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Waiting for an eviction slot (concurrency limit).
    Queued,
    /// Eviction requested, no answer yet.
    Evicting,
    /// Refused or unanswered; retried.
    Blocked {
        /// "namespace/name" of the budget that refused, when known.
        pdb: Option<String>,
        /// What the API server said last.
        message: String,
        since: Instant,
        attempts: u32,
    },
    /// Accepted; waiting for it to be gone.
    Terminating {
        since: Instant,
    },
    Gone,
}

/// Healthy pods of a budget: (current, desired).
pub type HealthyCounts<'a> = &'a dyn Fn(&str) -> Option<(i32, i32)>;

/// Why the pods in `states` (keyed "namespace/name") are not gone yet.
pub fn unfinished(
    states: &BTreeMap<String, PodState>,
    healthy: HealthyCounts<'_>,
    now: Instant,
) -> String {
    let mut by_budget: BTreeMap<&str, (Duration, Vec<&str>)> = BTreeMap::new();
    let mut api: Option<(Duration, &str)> = None;
    let mut api_pods = 0;
    let mut terminating: Option<Duration> = None;
    let mut terminating_pods = Vec::new();
    let mut queued = 0;
    for (pod, state) in states {
        match state {
            PodState::Blocked {
                pdb: Some(pdb),
                since,
                ..
            } => {
                let entry = by_budget.entry(pdb).or_default();
                entry.0 = entry.0.max(now.saturating_duration_since(*since));
                entry.1.push(pod);
            }
            PodState::Blocked {
                pdb: None,
                since,
                message,
                ..
            } => {
                api_pods += 1;
                let waited = now.saturating_duration_since(*since);
                if api.is_none_or(|(longest, _)| waited > longest) {
                    api = Some((waited, message));
                }
            }
            PodState::Terminating { since } => {
                let waited = now.saturating_duration_since(*since);
                terminating = Some(terminating.unwrap_or_default().max(waited));
                terminating_pods.push(pod.as_str());
            }
            PodState::Queued | PodState::Evicting => queued += 1,
            PodState::Gone => {}
        }
    }
    let mut parts = Vec::new();
    for (pdb, (waited, pods)) in by_budget {
        let counts = match healthy(pdb) {
            Some((current, desired)) => format!(" ({current}/{desired} healthy)"),
            None => String::new(),
        };
        parts.push(format!(
            "blocked by PDB {pdb} for {}{counts}: {}",
            go_duration(waited),
            pods.join(", ")
        ));
    }
    if let Some((waited, message)) = api {
        parts.push(format!(
            "{} refused by the API server for {}: {message}",
            count(api_pods, "pod"),
            go_duration(waited)
        ));
    }
    if let Some(waited) = terminating {
        parts.push(format!(
            "{} still terminating after {}: {}",
            count(terminating_pods.len(), "pod"),
            go_duration(waited),
            terminating_pods.join(", ")
        ));
    }
    if queued > 0 {
        parts.push(format!("{} not yet evicted", count(queued, "pod")));
    }
    parts.join("; ")
}

/// A duration as Go prints it (what kubectl users read): "5m0s", "1h2m3s",
/// "45s", "800ms". Whole seconds from one second up.
pub fn go_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(secs(300)), "5m0s");
        assert_eq!(go_duration(secs(3723)), "1h2m3s");
        assert_eq!(go_duration(secs(45)), "45s");
        assert_eq!(go_duration(Duration::from_millis(1999)), "1s");
        assert_eq!(go_duration(Duration::from_millis(800)), "800ms");
    }

    #[test]
    fn a_timed_out_drain_says_what_blocks_it() {
        let t0 = Instant::now();
        let blocked = |since: u64| PodState::Blocked {
            pdb: Some("shop/web".into()),
            message: "Cannot evict pod".into(),
            since: t0 + secs(since),
            attempts: 4,
        };
        let states: BTreeMap<String, PodState> = [
            ("shop/web-1".to_string(), blocked(0)),
            ("shop/web-2".to_string(), blocked(20)),
            (
                "shop/db-0".to_string(),
                PodState::Terminating {
                    since: t0 + secs(290),
                },
            ),
            ("shop/api-1".to_string(), PodState::Gone),
            ("shop/api-2".to_string(), PodState::Queued),
        ]
        .into();
        let healthy = |pdb: &str| (pdb == "shop/web").then_some((2, 3));
        assert_eq!(
            unfinished(&states, &healthy, t0 + secs(300)),
            "blocked by PDB shop/web for 5m0s (2/3 healthy): shop/web-1, shop/web-2; \
             1 pod still terminating after 10s: shop/db-0; 1 pod not yet evicted"
        );
    }

    #[test]
    fn api_failures_and_unknown_budgets_are_explained_too() {
        let t0 = Instant::now();
        let states: BTreeMap<String, PodState> = [
            (
                "shop/a".to_string(),
                PodState::Blocked {
                    pdb: None,
                    message: "503 unavailable".into(),
                    since: t0,
                    attempts: 9,
                },
            ),
            (
                "shop/b".to_string(),
                PodState::Blocked {
                    pdb: Some("shop/gone".into()),
                    message: String::new(),
                    since: t0 + secs(5),
                    attempts: 1,
                },
            ),
        ]
        .into();
        assert_eq!(
            unfinished(&states, &|_| None, t0 + secs(65)),
            "blocked by PDB shop/gone for 1m0s: shop/b; \
             1 pod refused by the API server for 1m5s: 503 unavailable"
        );
    }
}
