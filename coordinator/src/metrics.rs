//! The coordinator's `/metrics`: the fleet's connections and the newest
//! rollout, read from live state at scrape time, plus the counters rollouts
//! keep as they go ([`crate::rollout::metrics`]).

use k3sfleet_proto::v1::{Connectivity, RolloutStatus};
use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, Opts};

use crate::fleet::Fleet;
use crate::rollout::RolloutEngine;
use crate::rollout::state::{Phase, Step};

/// The exposition text for one scrape.
pub async fn render(fleet: &Fleet, rollouts: &RolloutEngine, now_ms: i64) -> String {
    let mut families = fleet_families(fleet, now_ms);
    if let Ok(status) = rollouts.status(0).await {
        families.extend(rollout_families(&status, now_ms));
    }
    families.extend(rollouts.metrics().collect());
    // A labelled family with no series yet cannot be encoded.
    families.retain(|family| !family.get_metric().is_empty());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|err| format!("# encoding the metrics failed: {err}\n"))
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::with_opts(Opts::new(name, help)).expect("valid gauge")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

fn fleet_families(fleet: &Fleet, now_ms: i64) -> Vec<prometheus::proto::MetricFamily> {
    let connected = gauge(
        "k3sfleet_agents_connected",
        "Agents holding a session with this coordinator.",
    );
    let node_connected = gauge_vec(
        "k3sfleet_node_connected",
        "1 when the node's agent holds a session, 0 when the coordinator knows the node but it is away.",
        &["node"],
    );
    let mut count = 0;
    for node in fleet.summaries(now_ms) {
        let up = node.connectivity == Connectivity::Connected as i32;
        count += usize::from(up);
        node_connected
            .with_label_values(&[node.name.as_str()])
            .set(if up { 1.0 } else { 0.0 });
    }
    connected.set(count as f64);

    let expiry = gauge_vec(
        "k3sfleet_node_certificate_expiry_timestamp_seconds",
        "When the client certificate of the node's open session expires (Unix time).",
        &["node"],
    );
    for (node, not_after_ms) in fleet.session_cert_expiries() {
        expiry
            .with_label_values(&[node.as_str()])
            .set(not_after_ms as f64 / 1000.0);
    }
    let mut families = connected.collect();
    families.extend(node_connected.collect());
    families.extend(expiry.collect());
    families
}

fn rollout_families(status: &RolloutStatus, now_ms: i64) -> Vec<prometheus::proto::MetricFamily> {
    let id = status.id.to_string();
    let phase = gauge_vec(
        "k3sfleet_rollout_phase",
        "The newest rollout's phase: 1 for the current one, 0 for the others.",
        &["rollout", "phase"],
    );
    for candidate in [
        Phase::Running,
        Phase::Paused,
        Phase::Aborting,
        Phase::Aborted,
        Phase::Completed,
    ] {
        phase
            .with_label_values(&[id.as_str(), candidate.as_str()])
            .set(if candidate.as_str() == status.phase {
                1.0
            } else {
                0.0
            });
    }

    let per_step = gauge_vec(
        "k3sfleet_rollout_nodes",
        "Nodes of the newest rollout at each step.",
        &["rollout", "step"],
    );
    for step in Step::ALL {
        let count = status
            .nodes
            .iter()
            .filter(|n| n.step == step.as_str())
            .count();
        per_step
            .with_label_values(&[id.as_str(), step.as_str()])
            .set(count as f64);
    }

    let cordoned = gauge_vec(
        "k3sfleet_node_cordoned_by_k3sfleet_seconds",
        "How long k3sfleet has held its cordon on the node (from the end of its pre-checks).",
        &["node"],
    );
    for node in status.nodes.iter().filter(|n| n.cordoned_by_k3sfleet) {
        let before_cordon: u64 = node
            .waits
            .iter()
            .filter(|w| matches!(w.reason.as_str(), "pre-checks" | "etcd snapshot"))
            .map(|w| w.millis)
            .sum();
        let since_ms = node.started_unix_ms + before_cordon as i64;
        cordoned
            .with_label_values(&[node.name.as_str()])
            .set((now_ms - since_ms).max(0) as f64 / 1000.0);
    }
    let mut families = phase.collect();
    families.extend(per_step.collect());
    families.extend(cordoned.collect());
    families
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::{NodeStatus, WaitTotal};

    #[test]
    fn the_rollout_shows_its_phase_steps_and_cordons() {
        let status = RolloutStatus {
            id: 4,
            phase: "paused".into(),
            nodes: vec![
                NodeStatus {
                    name: "worker-01".into(),
                    step: "drain".into(),
                    started_unix_ms: 10_000,
                    cordoned_by_k3sfleet: true,
                    waits: vec![WaitTotal {
                        reason: "pre-checks".into(),
                        millis: 2_000,
                    }],
                    ..Default::default()
                },
                NodeStatus {
                    name: "worker-02".into(),
                    step: "done".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&rollout_families(&status, 72_000))
            .unwrap();
        assert!(
            text.contains("k3sfleet_rollout_phase{phase=\"paused\",rollout=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("k3sfleet_rollout_phase{phase=\"running\",rollout=\"4\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("k3sfleet_rollout_nodes{rollout=\"4\",step=\"drain\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("k3sfleet_rollout_nodes{rollout=\"4\",step=\"pending\"} 0"),
            "{text}"
        );
        // Cordoned at 12 s (after 2 s of pre-checks), scraped at 72 s.
        assert!(
            text.contains("k3sfleet_node_cordoned_by_k3sfleet_seconds{node=\"worker-01\"} 60"),
            "{text}"
        );
        assert!(!text.contains("node=\"worker-02\""), "{text}");
    }
}
