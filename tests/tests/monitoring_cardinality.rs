//! Cardinality of the coordinator's /metrics as the fleet grows: a real
//! coordinator with 18 and with 1,000 simulated agents (the load generator's,
//! one mTLS session each), its series counted per metric, and the metrics
//! whose series grow with the fleet named. Each agent's own series do not
//! depend on the fleet's size (monitoring_stack.rs counts them on a lab).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k3sfleet_sim::load::harness::LoadCoordinator;
use k3sfleet_sim::load::{LoadFleet, LoadSpec, agent_names, issue_agents};
use k3sfleet_tests::monitoring::http_get;

/// Series in an exposition, by metric name, with the label names each uses.
fn series_by_metric(exposition: &str) -> BTreeMap<String, (usize, String)> {
    let mut by_metric = BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels: Vec<&str> = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map(|(labels, _)| {
                labels
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
                    .collect()
            })
            .unwrap_or_default();
        let entry = by_metric
            .entry(line[..name_end].to_string())
            .or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = labels.join(",");
    }
    by_metric
}

/// The coordinator's series with `nodes` simulated agents connected.
async fn coordinator_series(nodes: usize) -> BTreeMap<String, (usize, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator =
        LoadCoordinator::start(dir.path(), "\n[metrics]\nlisten = \"127.0.0.1:0\"").unwrap();
    let issued = issue_agents(
        &coordinator.ca,
        &agent_names("load-", nodes),
        Duration::from_secs(3600),
    )
    .unwrap();
    let fleet = LoadFleet::start(LoadSpec {
        target: coordinator.target(2).unwrap(),
        identities: issued.identities,
        interval: Duration::from_secs(5),
        max_reconnect_delay: Duration::from_secs(2),
        k3s_version: "v1.31.4+k3s1".into(),
        ramp: Duration::from_secs(2),
        probes: 1,
    });
    assert!(
        fleet
            .wait_all_connected(Duration::from_secs(180))
            .await
            .is_some(),
        "not all {nodes} agents connected: {:?}",
        fleet.stats().snapshot()
    );
    let address: SocketAddr =
        std::fs::read_to_string(coordinator.dir.join("coordinator-data/metrics-address"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    // Every session registered in what it serves.
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let (code, body) = tokio::task::block_in_place(|| http_get(address, "/metrics")).unwrap();
        assert_eq!(code, 200, "{body}");
        let series = series_by_metric(&body);
        if series.get("k3sfleet_node_connected").map(|s| s.0) == Some(nodes) {
            break series;
        }
        assert!(Instant::now() < deadline, "{series:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    fleet.stop().await;
    coordinator.stop(false);
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_series_at_18_and_1000_nodes_grow_only_by_node() {
    let small = coordinator_series(18).await;
    let large = coordinator_series(1000).await;
    let total =
        |s: &BTreeMap<String, (usize, String)>| -> usize { s.values().map(|(n, _)| n).sum() };
    eprintln!(
        "coordinator series: {} at 18 nodes, {} at 1000 nodes",
        total(&small),
        total(&large)
    );
    let mut growing = Vec::new();
    for (metric, (count, labels)) in &large {
        let before = small.get(metric).map_or(0, |(n, _)| *n);
        if *count > before {
            eprintln!("  grows with the fleet: {metric}{{{labels}}}: {before} -> {count}");
            growing.push((metric.clone(), labels.clone(), *count));
        }
    }
    // What grows, grows by one series per node and carries the node's name.
    assert!(!growing.is_empty());
    for (metric, labels, count) in growing {
        assert_eq!(count, 1000, "{metric}: {count} series at 1000 nodes");
        assert!(
            labels.split(',').any(|l| l == "node"),
            "{metric} grows with the fleet without a node label: {labels}"
        );
    }
}
