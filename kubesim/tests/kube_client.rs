//! kube-rs (the client k3sfleet's coordinator uses) against the simulator: list, watch,
//! the runtime watcher, patches of every content type, evictions, node registration.

mod common;

use common::{client, scenario, scenario_file, start, wait_until};
use futures::{StreamExt, TryStreamExt};
use k3sfleet_kubesim::kubelet;
use k3sfleet_kubesim::time::Now;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

fn unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn ready_status(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pages() {
    let sim = start(&scenario_file("demo.toml")).await;
    let client = client(&sim);
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        18
    );

    let pods: Api<Pod> = Api::all(client.clone());
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), sim.inspect(|c| c.pods.len()));
    let rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv > 0);

    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=worker-05"))
        .await
        .unwrap();
    assert!(!on_node.items.is_empty());
    assert!(
        on_node
            .items
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("worker-05"))
    );
    assert_eq!(
        on_node.items.len(),
        common::pods_on(&sim, "worker-05").len()
    );

    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let carts = shop
        .list(&ListParams::default().labels("app in (cart,checkout)"))
        .await
        .unwrap();
    assert_eq!(carts.items.len(), 5);

    // Paging: kube-rs follows `continue` tokens.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(7);
    loop {
        let page = pods.list(&params).await.unwrap();
        seen.extend(page.items.iter().map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.clone().unwrap(),
                p.metadata.name.clone().unwrap()
            )
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), all.items.len());
    assert_eq!(seen, unique, "pages overlap or are out of order");

    let bad = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = bad else {
        panic!("{bad:?}")
    };
    assert_eq!(status.code, 400);
    assert!(status.message.contains("spec.bogus"), "{}", status.message);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_of_every_kind_cordon_and_label() {
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let pp = PatchParams::default();

    nodes
        .patch(
            "worker-2",
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert!(unschedulable(&nodes.get("worker-2").await.unwrap()));
    nodes
        .patch(
            "worker-2",
            &pp,
            &Patch::Merge(json!({"spec": {"unschedulable": null}})),
        )
        .await
        .unwrap();
    assert!(!unschedulable(&nodes.get("worker-2").await.unwrap()));
    // kube-rs sends json-patch only with its `jsonpatch` feature; send the same request raw.
    let reply = common::request(
        &client(&sim),
        "PATCH",
        "/api/v1/nodes/worker-2",
        &[("content-type", "application/json-patch+json")],
        Some(
            json!([{"op": "add", "path": "/metadata/labels/team", "value": "storage"}]).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let labelled = nodes.get("worker-2").await.unwrap();
    assert_eq!(
        labelled
            .metadata
            .labels
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("storage")
    );

    // Stale resourceVersion in an update: 409 Conflict.
    let mut stale = nodes.get("worker-3").await.unwrap();
    nodes
        .patch(
            "worker-3",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    stale
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("y".into(), "2".into());
    let err = nodes
        .replace("worker-3", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_watcher_sees_changes_and_evictions() {
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let stream = watcher(pods.clone(), watcher::Config::default().labels("app=db"));
    let mut stream = Box::pin(stream);

    // Initial list: three StatefulSet pods.
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(common::WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(p) => initial.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    initial.sort();
    assert_eq!(initial, ["db-0", "db-1", "db-2"]);
    let old_uid = pods.get("db-1").await.unwrap().metadata.uid.unwrap();

    pods.evict("db-1", &EvictParams::default()).await.unwrap();

    // The watcher sees it deleted and then a new db-1 (same name, new UID) become Ready.
    let mut deleted = false;
    let new_uid = loop {
        let event = tokio::time::timeout(common::WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::Delete(p) if p.metadata.uid.as_deref() == Some(old_uid.as_str()) => {
                deleted = true
            }
            watcher::Event::Apply(p) if deleted && p.metadata.name.as_deref() == Some("db-1") => {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready {
                    break p.metadata.uid.unwrap();
                }
            }
            _ => {}
        }
    };
    assert_ne!(new_uid, old_uid);
    assert_eq!(sim.stats().pdb_violations, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_refused_with_a_status_when_the_budget_is_spent() {
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "shop");
    let web: Vec<String> = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    let status = pdbs.get("web").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.current_healthy,
            status.desired_healthy,
            status.disruptions_allowed,
            status.expected_pods
        ),
        (4, 3, 1, 4)
    );

    pods.evict(&web[0], &EvictParams::default()).await.unwrap();
    let status = pdbs.get("web").await.unwrap().status.unwrap();
    assert_eq!((status.current_healthy, status.disruptions_allowed), (3, 0));

    let err = pods
        .evict(&web[1], &EvictParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(
        status.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );

    // The replacement becomes Ready and the budget recovers.
    wait_until("web's budget to recover", || {
        let pdbs = pdbs.clone();
        async move {
            pdbs.get("web")
                .await
                .unwrap()
                .status
                .unwrap()
                .disruptions_allowed
                == 1
        }
    })
    .await;
    pods.evict(&web[1], &EvictParams::default()).await.unwrap();
    let stats = sim.stats();
    assert_eq!(stats.evictions_refused.get("shop/web"), Some(&1));
    assert_eq!(stats.pdb_violations, 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_resumes_and_expires() {
    let sim = start(&scenario(
        r#"
        [cluster]
        watch_history = 5
        [[nodes]]
        name = "a"
        "#,
    ))
    .await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let rv = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let pp = PatchParams::default();
    nodes
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"step": "1"}}})),
        )
        .await
        .unwrap();

    // Resuming from the list's version replays the change.
    let mut stream = Box::pin(
        nodes
            .watch(&WatchParams::default().timeout(5), &rv)
            .await
            .unwrap(),
    );
    let event = tokio::time::timeout(common::WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Modified(node) = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        node.metadata
            .labels
            .unwrap()
            .get("step")
            .map(String::as_str),
        Some("1")
    );
    drop(stream);

    // Push the list's version out of the history: 410 Gone, reason Expired.
    for step in 2..10 {
        nodes
            .patch(
                "a",
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {"step": step.to_string()}}})),
            )
            .await
            .unwrap();
    }
    let mut stream = Box::pin(
        nodes
            .watch(&WatchParams::default().timeout(5), &rv)
            .await
            .unwrap(),
    );
    let event = tokio::time::timeout(common::WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Error(status) = event else {
        panic!("{event:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    sim.shutdown().await;
}

/// A stand-in kubelet registers its node, reports Ready and a new kubelet version, then
/// stops: the node goes Ready=Unknown after node_monitor_grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_registration_status_and_lost_heartbeat() {
    let sim = start(&scenario(
        r#"
        [cluster]
        time_scale = 10.0
        [timings]
        node_monitor_grace = 10
        [[nodes]]
        name = "server-1"
        role = "server"
        "#,
    ))
    .await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let registration: Node =
        serde_json::from_value(kubelet::registration("agent-9", false, "v1.32.3+k3s1")).unwrap();
    nodes
        .create(&PostParams::default(), &registration)
        .await
        .unwrap();
    let again = nodes
        .create(&PostParams::default(), &registration)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = again else {
        panic!("{again:?}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    // Checked on the PATCH's own answer: a later GET could already see the node gone silent.
    let patch = kubelet::ready_status_patch(true, "v1.33.5+k3s1", &Now::capture());
    let node = nodes
        .patch_status("agent-9", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    assert_eq!(ready_status(&node), "True");
    assert_eq!(
        node.status.unwrap().node_info.unwrap().kubelet_version,
        "v1.33.5+k3s1"
    );

    // A status patch must not touch spec, and a main-resource patch must not touch status.
    nodes
        .patch(
            "agent-9",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "x"}, "spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let node = nodes.get("agent-9").await.unwrap();
    assert!(unschedulable(&node));
    assert_eq!(node.status.as_ref().unwrap().phase, None);

    // Silence: 10 cluster seconds = 1 s wall.
    wait_until("agent-9 to go Unknown", || {
        let nodes = nodes.clone();
        async move { ready_status(&nodes.get("agent-9").await.unwrap()) == "Unknown" }
    })
    .await;
    // The scenario's own (simulated) node stays Ready.
    assert_eq!(ready_status(&nodes.get("server-1").await.unwrap()), "True");
    // A heartbeat brings it back.
    let patch = kubelet::ready_status_patch(true, "v1.33.5+k3s1", &Now::capture());
    let node = nodes
        .patch_status("agent-9", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    assert_eq!(ready_status(&node), "True");
    sim.shutdown().await;
}
