//! The API server's rules and wire format, checked with raw HTTP: eviction rules and their
//! Status bodies, the violation counter, graceful deletion, errors, tables, watches,
//! discovery, the scheduler, and fault injection.

mod common;

use std::time::Duration;

use common::{client, eviction, get, post_json, request, scenario, start, wait_until};
use serde_json::{Value, json};

const SMALL: &str = r#"
[cluster]
bookmark_interval = 0.2

[timings]
replacement_delay = 1
ready_delay = 1
termination = 1

[[nodes]]
name = "node-a"
labels = { disk = "ssd" }

[[nodes]]
name = "node-b"

[[deployments]]
namespace = "app"
name = "api"
replicas = 2

[[pdbs]]
namespace = "app"
name = "api"
selector = { app = "api" }
min_available = 2

[[pods]]
namespace = "app"
name = "flaky"
node = "node-b"
ready = false

[[pdbs]]
namespace = "app"
name = "flaky"
selector = { app = "flaky" }
max_unavailable = 0
unhealthy_pod_eviction_policy = "AlwaysAllow"

[[pods]]
namespace = "app"
name = "lonely"
node = "node-a"
labels = { tier = "shared" }

[[pdbs]]
namespace = "app"
name = "shared-1"
selector = { tier = "shared" }
min_available = 0

[[pdbs]]
namespace = "app"
name = "shared-2"
selector = { tier = "shared" }
min_available = 0
"#;

fn api_pod(sim: &k3sfleet_kubesim::Running) -> String {
    sim.inspect(|c| {
        c.pods
            .in_namespace("app")
            .map(|p| p.metadata.name.clone().unwrap())
            .find(|n| n.starts_with("api-"))
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_rules_and_status_bodies() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let api = api_pod(&sim);
    let path = |name: &str| format!("/api/v1/namespaces/app/pods/{name}/eviction");

    // Budget exhausted (2 of 2 required): 429 with the API server's exact Status.
    let reply = post_json(&client, &path(&api), &eviction(&api, "app", "policy/v1")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "reason": "TooManyRequests", "code": 429,
            "details": { "causes": [{ "reason": "DisruptionBudget", "message": "The disruption budget api needs 2 healthy pods and has 2 currently" }] }
        })
    );
    // policy/v1beta1 bodies get the same answer.
    let reply = post_json(
        &client,
        &path(&api),
        &eviction(&api, "app", "policy/v1beta1"),
    )
    .await;
    assert_eq!(reply.status, 429);

    // Several PDBs: 500 without a reason.
    let reply = post_json(
        &client,
        &path("lonely"),
        &eviction("lonely", "app", "policy/v1"),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.body["message"],
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
    assert!(reply.body.get("reason").is_none());

    // Missing pod: 404 NotFound.
    let reply = post_json(
        &client,
        &path("ghost"),
        &eviction("ghost", "app", "policy/v1"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body["reason"].as_str()),
        (404, Some("NotFound"))
    );
    assert_eq!(reply.body["message"], "pods \"ghost\" not found");

    // Name mismatch: 400.
    let reply = post_json(&client, &path(&api), &eviction("other", "app", "policy/v1")).await;
    assert_eq!(reply.status, 400);

    // Unhealthy pod under AlwaysAllow: evicted although maxUnavailable is 0. Dry run first.
    let mut dry = eviction("flaky", "app", "policy/v1");
    dry["deleteOptions"] = json!({ "dryRun": ["All"] });
    let reply = post_json(&client, &path("flaky"), &dry).await;
    assert_eq!(
        (reply.status, &reply.body["status"]),
        (201, &json!("Success"))
    );
    assert!(
        sim.inspect(|c| c
            .pods
            .get("app", "flaky")
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()),
        "dry run deleted"
    );
    let reply = post_json(
        &client,
        &format!("{}?dryRun=All", path("flaky")),
        &eviction("flaky", "app", "policy/v1"),
    )
    .await;
    assert_eq!(reply.status, 201);
    assert!(
        sim.inspect(|c| c
            .pods
            .get("app", "flaky")
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()),
        "dry run deleted"
    );
    let reply = post_json(
        &client,
        &path("flaky"),
        &eviction("flaky", "app", "policy/v1"),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(sim.inspect(|c| {
        c.pods
            .get("app", "flaky")
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    }));

    let stats = sim.stats();
    assert_eq!(stats.evictions_refused.get("app/api"), Some(&2));
    assert_eq!(stats.evictions_accepted, 1);
    assert_eq!(stats.pdb_violations, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pods_skip_the_budget() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    // Cordon both nodes, then lose a pod: its replacement cannot be scheduled and stays Pending.
    for node in ["node-a", "node-b"] {
        let reply = request(
            &client,
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            &[("content-type", "application/strategic-merge-patch+json")],
            Some(r#"{"spec":{"unschedulable":true}}"#.into()),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let api = api_pod(&sim);
    let reply = request(
        &client,
        "DELETE",
        &format!("/api/v1/namespaces/app/pods/{api}"),
        &[],
        Some(r#"{"gracePeriodSeconds":0}"#.into()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        sim.stats().pdb_violations,
        1,
        "a raw delete of a budgeted pod with no budget left is a violation"
    );

    let pending = |sim: &k3sfleet_kubesim::Running| {
        sim.inspect(|c| {
            c.pods
                .in_namespace("app")
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
                .map(|p| {
                    let reason = p
                        .status
                        .as_ref()
                        .unwrap()
                        .conditions
                        .as_ref()
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
                        .and_then(|c| c.reason.clone());
                    (p.metadata.name.clone().unwrap(), reason)
                })
        })
    };
    wait_until("an unschedulable replacement", || async {
        pending(&sim).is_some()
    })
    .await;
    let (name, reason) = pending(&sim).unwrap();
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    // Budget is still exhausted (1 healthy of 2), yet a Pending pod is evicted.
    let reply = post_json(
        &client,
        &format!("/api/v1/namespaces/app/pods/{name}/eviction"),
        &eviction(&name, "app", "policy/v1"),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_delete_then_gone_and_violation_counted() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let api = api_pod(&sim);
    let reply = request(
        &client,
        "DELETE",
        &format!("/api/v1/namespaces/app/pods/{api}"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let stats = sim.stats();
    assert_eq!(stats.pdb_violations, 1);
    assert_eq!(
        (
            stats.violations[0].pod.as_str(),
            stats.violations[0].pdb.as_str(),
            stats.violations[0].action.as_str()
        ),
        (format!("app/{api}").as_str(), "app/api", "delete")
    );

    // Terminating: still listed, with a deletionTimestamp; gone after the termination time.
    let reply = get(&client, &format!("/api/v1/namespaces/app/pods/{api}")).await;
    assert_eq!(reply.status, 200);
    wait_until("the pod to be gone", || {
        let client = client.clone();
        let api = api.clone();
        async move {
            get(&client, &format!("/api/v1/namespaces/app/pods/{api}"))
                .await
                .status
                == 404
        }
    })
    .await;
    // The control surface reports the same counter.
    let reply = get(&client, "/sim/v1/stats").await;
    assert_eq!(reply.body["pdb_violations"], 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let check = |reply: &common::Reply, code: u16, reason: &str| {
        assert_eq!(reply.status, code, "{}", reply.body);
        assert_eq!(reply.body["kind"], "Status", "{}", reply.body);
        assert_eq!(reply.body["code"], code);
        assert_eq!(reply.body["reason"], reason, "{}", reply.body);
        assert_eq!(reply.content_type, "application/json");
    };
    check(&get(&client, "/api/v1/nodes/nope").await, 404, "NotFound");
    check(
        &get(&client, "/apis/apps/v1/namespaces/app/daemonsets/none").await,
        404,
        "NotFound",
    );
    check(&get(&client, "/api/v1/widgets").await, 404, "NotFound");
    check(
        &request(&client, "DELETE", "/api/v1/nodes", &[], None).await,
        405,
        "MethodNotAllowed",
    );
    check(
        &request(
            &client,
            "PATCH",
            "/api/v1/nodes/node-a",
            &[("content-type", "application/apply-patch+yaml")],
            Some("{}".into()),
        )
        .await,
        415,
        "UnsupportedMediaType",
    );
    // 409 on a stale resourceVersion.
    let node = get(&client, "/api/v1/nodes/node-a").await.body;
    let mut stale = node.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    check(
        &request(
            &client,
            "PUT",
            "/api/v1/nodes/node-a",
            &[("content-type", "application/json")],
            Some(stale.to_string()),
        )
        .await,
        409,
        "Conflict",
    );
    // A no-op PUT with the current version keeps the version.
    let reply = request(
        &client,
        "PUT",
        "/api/v1/nodes/node-a",
        &[("content-type", "application/json")],
        Some(node.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body["metadata"]["resourceVersion"],
        node["metadata"]["resourceVersion"]
    );
    // 422 for an invalid PDB.
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": "both" },
        "spec": { "minAvailable": 1, "maxUnavailable": 1, "selector": { "matchLabels": { "app": "api" } } }
    });
    let reply = post_json(
        &client,
        "/apis/policy/v1/namespaces/app/poddisruptionbudgets",
        &pdb,
    )
    .await;
    check(&reply, 422, "Invalid");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("PodDisruptionBudget \"both\" is invalid"),
        "{}",
        reply.body
    );
    // 409 AlreadyExists.
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "app" } });
    check(
        &post_json(&client, "/api/v1/namespaces", &ns).await,
        409,
        "AlreadyExists",
    );
    // Bad selectors: 400.
    check(
        &get(&client, "/api/v1/pods?labelSelector=app%20in%20x").await,
        400,
        "BadRequest",
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_created_through_the_api_gets_status_and_is_served_as_v1beta1() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": "half" },
        "spec": { "maxUnavailable": "50%", "selector": { "matchLabels": { "app": "api" } } }
    });
    let reply = post_json(
        &client,
        "/apis/policy/v1/namespaces/app/poddisruptionbudgets",
        &pdb,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = get(
        &client,
        "/apis/policy/v1beta1/namespaces/app/poddisruptionbudgets/half",
    )
    .await;
    assert_eq!(reply.body["apiVersion"], "policy/v1beta1");
    let status = &reply.body["status"];
    assert_eq!(
        (
            status["expectedPods"].as_i64(),
            status["desiredHealthy"].as_i64(),
            status["disruptionsAllowed"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(
        status["observedGeneration"],
        reply.body["metadata"]["generation"]
    );
    let list = get(&client, "/apis/policy/v1beta1/poddisruptionbudgets").await;
    assert_eq!(list.body["kind"], "PodDisruptionBudgetList");
    assert_eq!(list.body["apiVersion"], "policy/v1beta1");
    assert_eq!(list.body["items"].as_array().unwrap().len(), 5);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_documents() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let version = get(&client, "/version").await.body;
    assert_eq!(
        (
            version["major"].as_str(),
            version["minor"].as_str(),
            version["gitVersion"].as_str()
        ),
        (Some("1"), Some("33"), Some("v1.33.5+k3s1"))
    );
    let core = get(&client, "/api/v1").await.body;
    let eviction = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .unwrap();
    assert_eq!(
        (
            eviction["group"].as_str(),
            eviction["version"].as_str(),
            eviction["kind"].as_str()
        ),
        (Some("policy"), Some("v1"), Some("Eviction"))
    );
    let groups = get(&client, "/apis").await.body;
    let policy = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "policy")
        .unwrap();
    assert_eq!(policy["preferredVersion"]["groupVersion"], "policy/v1");
    assert_eq!(policy["versions"].as_array().unwrap().len(), 2);
    assert_eq!(get(&client, "/apis/apps").await.body["kind"], "APIGroup");
    let apps = get(&client, "/apis/apps/v1").await.body;
    assert!(
        apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "daemonsets" && r["shortNames"] == json!(["ds"]))
    );
    // Aggregated discovery is asked for by Accept header; plain JSON comes back.
    let reply = request(
        &client,
        "GET",
        "/apis",
        &[(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )],
        None,
    )
    .await;
    assert_eq!(
        (
            reply.status,
            reply.content_type.as_str(),
            reply.body["kind"].as_str()
        ),
        (200, "application/json", Some("APIGroupList"))
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_for_kubectl() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let accept = [(
        "accept",
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )];
    let reply = request(&client, "GET", "/api/v1/nodes", &accept, None).await;
    assert_eq!(
        (
            reply.body["kind"].as_str(),
            reply.body["apiVersion"].as_str()
        ),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    let columns: Vec<&str> = reply.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Status", "Roles", "Age", "Version"]);
    let row = &reply.body["rows"][0];
    assert_eq!(row["cells"][0], "node-a");
    assert_eq!(row["cells"][1], "Ready");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    let reply = request(
        &client,
        "GET",
        "/api/v1/namespaces/app/pods/flaky",
        &accept,
        None,
    )
    .await;
    assert_eq!(reply.body["rows"][0]["cells"][1], "0/1");
    assert_eq!(reply.body["rows"][0]["cells"][2], "CrashLoopBackOff");
    sim.shutdown().await;
}

/// Reads watch events (one JSON document per line) from a raw streaming response.
async fn watch_lines(client: &kube::Client, path: &str, want: usize) -> Vec<Value> {
    use http_body_util::BodyExt;
    let request = http::Request::get(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while events.len() < want {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame.unwrap(),
            Ok(None) => break,
            Err(_) => panic!("watch {path}: got {events:?}, wanted {want}"),
        };
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let list = get(&client, "/api/v1/nodes").await.body;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    // No resourceVersion: synthetic ADDED for what exists.
    let events = watch_lines(&client, "/api/v1/nodes?watch=1&timeoutSeconds=5", 2).await;
    assert!(events.iter().all(|e| e["type"] == "ADDED"));

    // From the list's version: only later changes; the selector turns "left the selector"
    // into DELETED; bookmarks arrive when allowed; timeoutSeconds ends the stream.
    let watcher = {
        let client = client.clone();
        let path = format!(
            "/api/v1/nodes?watch=true&resourceVersion={rv}&labelSelector=disk%3Dssd&allowWatchBookmarks=true&timeoutSeconds=3"
        );
        tokio::spawn(async move { watch_lines(&client, &path, 1000).await })
    };
    // The watch starts from the list's version, so changes made before it connects are
    // replayed: no need to wait for it.
    let patch = |labels: Value| {
        let client = client.clone();
        async move {
            let body = json!({ "metadata": { "labels": labels } }).to_string();
            let reply = request(
                &client,
                "PATCH",
                "/api/v1/nodes/node-a",
                &[("content-type", "application/merge-patch+json")],
                Some(body),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    };
    patch(json!({ "team": "x" })).await;
    patch(json!({ "disk": "hdd" })).await;
    patch(json!({ "disk": "ssd" })).await;
    let events = watcher.await.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|t| *t != "BOOKMARK")
        .collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED", "ADDED"], "{events:?}");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark within 3 s at 0.2 s intervals");
    assert_eq!(bookmark["object"]["kind"], "Node");
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= rv.parse::<u64>().unwrap()
    );

    // sendInitialEvents: ADDED for the state, then the initial-events-end bookmark.
    let events = watch_lines(&client, "/api/v1/nodes?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5", 3).await;
    assert_eq!(events[2]["type"], "BOOKMARK");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_then_recovery() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    let reply = request(
        &client,
        "PUT",
        "/sim/v1/faults",
        &[("content-type", "application/json")],
        Some(r#"{"errors_for_seconds": 30}"#.into()),
    )
    .await;
    assert_eq!(reply.status, 200);
    let failed = get(&client, "/api/v1/nodes").await;
    assert_eq!(
        (failed.status, failed.body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    // The control surface itself keeps working.
    assert_eq!(get(&client, "/sim/v1/stats").await.status, 200);
    let reply = request(&client, "DELETE", "/sim/v1/faults", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(get(&client, "/api/v1/nodes").await.status, 200);

    sim.inject_faults(&k3sfleet_kubesim::Faults {
        latency_ms: 300,
        errors_for_seconds: 0.0,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    assert_eq!(get(&client, "/api/v1/nodes").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.clear_faults();
    let reply = request(
        &client,
        "PUT",
        "/sim/v1/faults",
        &[],
        Some(r#"{"latency": 5}"#.into()),
    )
    .await;
    assert_eq!(
        reply.status, 400,
        "unknown fields are refused: {}",
        reply.body
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_loses_its_pods_and_they_are_replaced() {
    let sim = start(&scenario(SMALL)).await;
    let client = client(&sim);
    assert!(!common::pods_on(&sim, "node-b").is_empty());
    let reply = request(&client, "DELETE", "/api/v1/nodes/node-b", &[], None).await;
    assert_eq!(reply.status, 200);
    assert!(
        common::pods_on(&sim, "node-b").is_empty(),
        "pods of a deleted node are collected"
    );
    wait_until("api to be back at 2 Ready replicas on node-a", || async {
        sim.inspect(|c| {
            c.pods
                .in_namespace("app")
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("api-"))
                })
                .filter(|p| k3sfleet_kubesim::cluster::pods::counts_as_healthy(p))
                .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-a"))
                .count()
                == 2
        })
    })
    .await;
    sim.shutdown().await;
}

/// With `pdb_sync_delay`, a new PDB is not observed at once: evictions it guards get 429 with
/// retryAfterSeconds 10 until its status catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unobserved_pdb_answers_429_retry_after() {
    let sim = start(&scenario(
        r#"
        [timings]
        pdb_sync_delay = 1
        [[nodes]]
        name = "n"
        [[deployments]]
        namespace = "app"
        name = "web"
        replicas = 2
        "#,
    ))
    .await;
    let client = client(&sim);
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": "web" },
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": { "app": "web" } } }
    });
    assert_eq!(
        post_json(
            &client,
            "/apis/policy/v1/namespaces/app/poddisruptionbudgets",
            &pdb
        )
        .await
        .status,
        201
    );
    let pod = sim.inspect(|c| {
        c.pods
            .in_namespace("app")
            .next()
            .unwrap()
            .metadata
            .name
            .clone()
            .unwrap()
    });
    let path = format!("/api/v1/namespaces/app/pods/{pod}/eviction");
    let reply = post_json(&client, &path, &eviction(&pod, "app", "policy/v1")).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.body["details"]["retryAfterSeconds"], 10);
    assert_eq!(
        reply.body["details"]["causes"][0]["message"],
        "The disruption budget web is still being processed by the server."
    );

    wait_until("the PDB to be observed", || {
        let client = client.clone();
        async move {
            let pdb = get(
                &client,
                "/apis/policy/v1/namespaces/app/poddisruptionbudgets/web",
            )
            .await
            .body;
            pdb["status"]["observedGeneration"] == 1
        }
    })
    .await;
    let reply = post_json(&client, &path, &eviction(&pod, "app", "policy/v1")).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    sim.shutdown().await;
}

/// What the real API server does with a budget when it admits an eviction
/// (found by tests/tests/real_differential.rs): it takes the disruption and
/// records the pod in `disruptedPods` before deleting anything, and marks
/// the pod with a DisruptionTarget condition; an eviction that then fails
/// its UID precondition (409, eviction.go's own message) leaves the budget
/// spent until the pod starts terminating or two minutes pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_eviction_spends_the_budget_first_even_when_its_precondition_then_fails() {
    let sim = start(&scenario(
        r#"
        [timings]
        replacement_delay = 0
        ready_delay = 1
        termination = 1
        [[nodes]]
        name = "node-a"
        [[deployments]]
        namespace = "app"
        name = "web"
        replicas = 3
        [[pdbs]]
        namespace = "app"
        name = "web"
        selector = { app = "web" }
        max_unavailable = 1
        "#,
    ))
    .await;
    let client = client(&sim);
    let pods: Vec<(String, String)> = sim.inspect(|c| {
        c.pods
            .in_namespace("app")
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap(),
                    p.metadata.uid.clone().unwrap(),
                )
            })
            .collect()
    });
    let budget = |sim: &k3sfleet_kubesim::Running| {
        sim.inspect(|c| c.pdbs.get("app", "web").unwrap().status.clone().unwrap())
    };
    let path = |name: &str| format!("/api/v1/namespaces/app/pods/{name}/eviction");
    let with_uid = |name: &str, uid: &str| {
        let mut body = eviction(name, "app", "policy/v1");
        body["deleteOptions"] = json!({"preconditions": {"uid": uid}});
        body
    };
    let ((a, a_uid), (b, b_uid), (c, _)) = (&pods[0], &pods[1], &pods[2]);

    // A dry run takes nothing.
    let mut dry = eviction(a, "app", "policy/v1");
    dry["deleteOptions"] = json!({"dryRun": ["All"]});
    assert_eq!(post_json(&client, &path(a), &dry).await.status, 201);
    assert_eq!(budget(&sim).disruptions_allowed, 1);

    // Admitted: the budget records the pod; the pod is marked, then deleted.
    assert_eq!(
        post_json(&client, &path(a), &with_uid(a, a_uid))
            .await
            .status,
        201
    );
    let status = budget(&sim);
    assert_eq!(status.disruptions_allowed, 0);
    let evicted = sim
        .inspect(|c| c.pods.get("app", a).map(|p| (**p).clone()))
        .unwrap();
    assert!(evicted.metadata.deletion_timestamp.is_some());
    let target = evicted
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(
        (target.status.as_str(), target.reason.as_deref()),
        ("True", Some("EvictionByEvictionAPI"))
    );
    wait_until("the budget to allow one again", || async {
        let status = budget(&sim);
        status.disruptions_allowed == 1 && status.disrupted_pods.is_none()
    })
    .await;

    // A UID precondition of another pod: 409 with eviction.go's message, and
    // the budget spent on this pod, which stays.
    let reply = post_json(&client, &path(b), &with_uid(b, "not-the-uid")).await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.body["message"],
        format!(
            "Operation cannot be fulfilled on Pod \"{b}\": the UID in the precondition (not-the-uid) \
             does not match the UID in record ({b_uid}). The object might have been deleted and then recreated"
        )
    );
    assert_eq!(reply.body["details"]["kind"], "Pod");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = budget(&sim);
    assert_eq!((status.current_healthy, status.disruptions_allowed), (2, 0));
    assert!(status.disrupted_pods.unwrap().contains_key(b));
    // The controller keeps counting it as disrupted: the budget refuses another.
    let reply = post_json(&client, &path(c), &eviction(c, "app", "policy/v1")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(sim.stats().pdb_violations, 0);
    assert_eq!(sim.stats().evictions_accepted, 1);
}
