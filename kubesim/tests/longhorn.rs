//! The simulated Longhorn: its resources served under longhorn.io/v1beta2, the
//! instance managers' budgets kept as longhorn-manager keeps them, replicas failing and
//! rebuilding, and the judge that records a volume left without a healthy replica.

mod common;

use common::{client, eviction, get, post_json, request, scenario, start, wait_until};
use k3sfleet_kubesim::Running;
use k3sfleet_kubesim::longhorn::{NAMESPACE, instance_manager_name, is_healthy};
use serde_json::json;

/// Four Longhorn workers; a database pod pinned to worker-3 uses `pvc-db`.
/// Cluster seconds at 10x: Ready after 0.2 s, a rebuild 0.5 s, a replacement 0.1 s.
fn world(policy: &str) -> String {
    format!(
        r#"
[cluster]
time_scale = 10.0

[timings]
replacement_delay = 1
ready_delay = 2
termination = 1

[[nodes]]
name = "worker-1"
labels = {{ disk = "ssd" }}

[[nodes]]
name = "worker-2"
labels = {{ disk = "ssd" }}

[[nodes]]
name = "worker-3"
labels = {{ disk = "ssd", db = "yes" }}

[[nodes]]
name = "worker-4"
labels = {{ disk = "ssd" }}

[[nodes]]
name = "edge-1"

[[statefulsets]]
namespace = "db"
name = "pg"
replicas = 1
node_selector = {{ db = "yes" }}

[longhorn]
node_selector = {{ disk = "ssd" }}
node_drain_policy = "{policy}"
rebuild_seconds = 5

[[longhorn.volumes]]
name = "pvc-web"
replicas = 3

[[longhorn.volumes]]
name = "pvc-solo"
replicas = 1
nodes = ["worker-1"]

[[longhorn.volumes]]
name = "pvc-pair"
replicas = 2
nodes = ["worker-1", "worker-2"]

[[longhorn.volumes]]
name = "pvc-db"
replicas = 2
consumer = "db/pg-0"
nodes = ["worker-2", "worker-3"]
"#
    )
}

fn healthy(sim: &Running, volume: &str) -> usize {
    sim.inspect(|c| {
        c.longhorn
            .replicas
            .iter()
            .filter(|r| r.text("/spec/volumeName") == volume && is_healthy(r))
            .count()
    })
}

fn robustness(sim: &Running, volume: &str) -> String {
    sim.inspect(|c| {
        c.longhorn
            .volumes
            .get(NAMESPACE, volume)
            .map(|v| v.text("/status/robustness").to_string())
            .unwrap_or_default()
    })
}

fn has_budget(sim: &Running, node: &str) -> bool {
    sim.inspect(|c| {
        c.pdbs
            .get(NAMESPACE, &instance_manager_name(node))
            .is_some()
    })
}

async fn cordon(client: &kube::Client, node: &str, on: bool) {
    let reply = request(
        client,
        "PATCH",
        &format!("/api/v1/nodes/{node}"),
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"spec": {"unschedulable": on}}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn evict_instance_manager(client: &kube::Client, node: &str) -> u16 {
    let name = instance_manager_name(node);
    post_json(
        client,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction"),
        &eviction(&name, NAMESPACE, "policy/v1"),
    )
    .await
    .status
}

#[tokio::test]
async fn longhorns_resources_are_discovered_only_where_it_is_installed() {
    let sim = start(&scenario(&world("block-if-contains-last-replica"))).await;
    let client = client(&sim);
    let list = get(&client, "/apis/longhorn.io/v1beta2").await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for kind in ["volumes", "replicas", "nodes", "settings", "volumes/status"] {
        assert!(names.contains(&kind), "{kind} missing: {names:?}");
    }
    let volumes = get(
        &client,
        "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/volumes",
    )
    .await;
    assert_eq!(volumes.body["kind"], "VolumeList");
    assert_eq!(volumes.body["items"].as_array().unwrap().len(), 4);
    let setting = get(
        &client,
        "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/settings/node-drain-policy",
    )
    .await;
    assert_eq!(setting.body["value"], "block-if-contains-last-replica");
    assert_eq!(setting.body["apiVersion"], "longhorn.io/v1beta2");
    // Longhorn's nodes are the ones its selector picks; edge-1 has none.
    let nodes = get(
        &client,
        "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes",
    )
    .await;
    assert_eq!(nodes.body["items"].as_array().unwrap().len(), 4);
    assert!(!has_budget(&sim, "edge-1"));
    sim.shutdown().await;

    let plain = start(&scenario("[[nodes]]\nname = \"n1\"\n")).await;
    let client = common::client(&plain);
    assert_eq!(get(&client, "/apis/longhorn.io/v1beta2").await.status, 404);
    let groups = get(&client, "/apis").await;
    assert!(
        !groups.body.to_string().contains("longhorn.io"),
        "{}",
        groups.body
    );
    assert_eq!(
        get(
            &client,
            "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/volumes"
        )
        .await
        .status,
        404
    );
    plain.shutdown().await;
}

#[tokio::test]
async fn a_cordoned_node_keeps_its_instance_manager_budget_while_it_holds_a_last_replica() {
    let sim = start(&scenario(&world("block-if-contains-last-replica"))).await;
    let client = client(&sim);
    for node in ["worker-1", "worker-2", "worker-3"] {
        assert!(has_budget(&sim, node), "{node} has no budget");
    }
    // worker-1 holds pvc-solo's only replica: its budget stays, the eviction is refused.
    cordon(&client, "worker-1", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(has_budget(&sim, "worker-1"));
    assert_eq!(evict_instance_manager(&client, "worker-1").await, 429);
    assert_eq!(healthy(&sim, "pvc-solo"), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_drained_nodes_replicas_fail_and_rebuild_in_place_when_it_comes_back() {
    let sim = start(&scenario(&world("block-if-contains-last-replica"))).await;
    let client = client(&sim);
    // worker-3 runs pvc-db's consumer: attached there, so Longhorn keeps the budget.
    wait_until("pvc-db attached", || async {
        sim.inspect(|c| {
            c.longhorn
                .volumes
                .get(NAMESPACE, "pvc-db")
                .is_some_and(|v| v.text("/status/currentNodeID") == "worker-3")
        })
    })
    .await;
    assert_eq!(robustness(&sim, "pvc-db"), "healthy");
    cordon(&client, "worker-3", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        has_budget(&sim, "worker-3"),
        "released while a volume is attached"
    );
    // The workload goes first; pg-0 cannot come back (only worker-3 fits), so pvc-db detaches.
    let reply = post_json(
        &client,
        "/api/v1/namespaces/db/pods/pg-0/eviction",
        &eviction("pg-0", "db", "policy/v1"),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    wait_until("worker-3's budget released", || async {
        !has_budget(&sim, "worker-3")
    })
    .await;
    assert_eq!(evict_instance_manager(&client, "worker-3").await, 201);
    wait_until("worker-3's replicas failed", || async {
        healthy(&sim, "pvc-db") == 1 && healthy(&sim, "pvc-web") == 2
    })
    .await;
    // worker-2 now holds pvc-db's last healthy replica: its budget stays even when cordoned.
    cordon(&client, "worker-2", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(has_budget(&sim, "worker-2"));
    assert_eq!(evict_instance_manager(&client, "worker-2").await, 429);
    cordon(&client, "worker-2", false).await;

    // Back: the instance manager returns, pg-0 comes back and attaches, the replicas rebuild.
    cordon(&client, "worker-3", false).await;
    let back = tokio::time::Instant::now();
    wait_until("pvc-db rebuilt", || async {
        healthy(&sim, "pvc-db") == 2 && robustness(&sim, "pvc-db") == "healthy"
    })
    .await;
    // A rebuild takes rebuild_seconds (0.5 s at 10x) after the instance manager is Ready.
    assert!(back.elapsed() >= std::time::Duration::from_millis(500));
    let stats = sim.stats();
    // pvc-db's replica rebuilt; pvc-web's on worker-3 did not: it is detached, and Longhorn
    // rebuilds only through a running engine (offline-replica-rebuilding is off by default).
    assert_eq!(stats.longhorn_rebuilds, 1, "{stats:?}");
    assert_eq!(healthy(&sim, "pvc-web"), 2);
    assert!(stats.longhorn_violations.is_empty(), "{stats:?}");
    assert_eq!(stats.longhorn_lowest_healthy.get("pvc-db"), Some(&1));
    assert_eq!(stats.pdb_violations, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_volume_left_without_a_healthy_replica_is_recorded() {
    // always-allow lets both of pvc-pair's nodes go: the judge must see it.
    let sim = start(&scenario(&world("always-allow"))).await;
    let client = client(&sim);
    for node in ["worker-1", "worker-2"] {
        cordon(&client, node, true).await;
    }
    wait_until("budgets released", || async {
        !has_budget(&sim, "worker-1") && !has_budget(&sim, "worker-2")
    })
    .await;
    for node in ["worker-1", "worker-2"] {
        assert_eq!(evict_instance_manager(&client, node).await, 201);
    }
    wait_until("pvc-pair faulted", || async {
        robustness(&sim, "pvc-pair") == "faulted"
    })
    .await;
    let stats = sim.stats();
    let faulted: Vec<&str> = stats
        .longhorn_violations
        .iter()
        .map(|v| v.volume.as_str())
        .collect();
    assert!(faulted.contains(&"pvc-pair"), "{stats:?}");
    assert!(faulted.contains(&"pvc-solo"), "{stats:?}");
    assert!(!faulted.contains(&"pvc-web"), "{stats:?}");
    assert_eq!(stats.longhorn_lowest_healthy.get("pvc-pair"), Some(&0));
    sim.shutdown().await;
}

#[tokio::test]
async fn an_eviction_request_moves_replicas_off_the_node() {
    let sim = start(&scenario(&world("block-if-contains-last-replica"))).await;
    let client = client(&sim);
    let reply = request(
        &client,
        "PATCH",
        "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes/worker-1",
        &[("content-type", "application/merge-patch+json")],
        Some(json!({"spec": {"evictionRequested": true}}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_until("worker-1 empty", || async {
        sim.inspect(|c| {
            !c.longhorn
                .replicas
                .iter()
                .any(|r| r.text("/spec/nodeID") == "worker-1")
        })
    })
    .await;
    assert_eq!(healthy(&sim, "pvc-solo"), 1);
    assert_eq!(healthy(&sim, "pvc-pair"), 2);
    // With nothing left on it, a cordon releases its budget.
    cordon(&client, "worker-1", true).await;
    wait_until("worker-1's budget released", || async {
        !has_budget(&sim, "worker-1")
    })
    .await;
    assert!(sim.stats().longhorn_violations.is_empty());
    sim.shutdown().await;
}
