//! The differential check's probe: one fixed script of what a drain's
//! client does and sees (eviction answers with their codes, Status reasons,
//! causes and Retry-After; budget status as it changes; watch events of an
//! evicted pod), run against any API server, written down as a transcript of
//! `(what, seen)` lines in which names that differ between clusters (pod
//! names, UIDs) are replaced by placeholders. The same script on kubesim and
//! on the real control plane must give the same transcript, except for the
//! differences tests/tests/real_differential.rs lists with their reasons.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

/// The probe's cluster: the same scenario on both tiers.
pub const SCENARIO: &str = r#"
[cluster]
time_scale = 1.0
[timings]
replacement_delay = 0
ready_delay = 2
termination = 0.5
[[nodes]]
name = "server-1"
role = "server"
[[nodes]]
name = "server-2"
role = "server"
[[nodes]]
name = "server-3"
role = "server"
[[nodes]]
name = "worker-1"
labels = { pool = "a" }
[[nodes]]
name = "worker-2"
labels = { pool = "a" }
[[deployments]]
namespace = "probe"
name = "web"
replicas = 4
node_selector = { pool = "a" }
grace_period = 1
[[deployments]]
namespace = "probe"
name = "frozen"
replicas = 2
node_selector = { pool = "a" }
[[deployments]]
namespace = "probe"
name = "spent"
replicas = 2
node_selector = { pool = "a" }
[[deployments]]
namespace = "probe"
name = "twice"
replicas = 1
node_selector = { pool = "a" }
[[deployments]]
namespace = "probe"
name = "stuck"
replicas = 1
node_selector = { pool = "nowhere" }
[[statefulsets]]
namespace = "probe"
name = "db"
replicas = 2
node_selector = { pool = "a" }
grace_period = 1
[[pdbs]]
namespace = "probe"
name = "web"
selector = { app = "web" }
min_available = 3
[[pdbs]]
namespace = "probe"
name = "frozen"
selector = { app = "frozen" }
min_available = 2
[[pdbs]]
namespace = "probe"
name = "spent"
selector = { app = "spent" }
max_unavailable = 1
[[pdbs]]
namespace = "probe"
name = "twice-a"
selector = { app = "twice" }
max_unavailable = 1
[[pdbs]]
namespace = "probe"
name = "twice-b"
selector = { app = "twice" }
max_unavailable = 1
[[pdbs]]
namespace = "probe"
name = "stuck"
selector = { app = "stuck" }
min_available = 1
[[pdbs]]
namespace = "probe"
name = "db"
selector = { app = "db" }
max_unavailable = 1
"#;

const NS: &str = "probe";

/// What the probe saw, line by line: what was done -> what came back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub lines: BTreeMap<String, String>,
    /// Names replaced by placeholders in what was seen.
    names: Vec<(String, String)>,
}

impl Transcript {
    fn note(&mut self, what: &str, seen: impl Into<String>) {
        let mut seen = seen.into();
        for (name, placeholder) in &self.names {
            seen = seen.replace(name.as_str(), placeholder);
        }
        self.lines.insert(what.to_string(), seen);
    }

    fn name(&mut self, name: &str, placeholder: &str) {
        self.names.push((name.to_string(), placeholder.to_string()));
        self.names
            .sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    }
}

/// An eviction's raw answer: code, Retry-After, the Status body.
async fn evict(client: &kube::Client, pod: &str, body: Value) -> (u16, String, Value) {
    let request = http::Request::post(format!("/api/v1/namespaces/{NS}/pods/{pod}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let response = client.send(request).await.expect("the API server answers");
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        code,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn eviction(pod: &str, version: &str) -> Value {
    json!({"apiVersion": version, "kind": "Eviction", "metadata": {"name": pod, "namespace": NS}})
}

/// The parts of an eviction answer a client acts on.
fn answer((code, retry_after, status): &(u16, String, Value)) -> String {
    let causes: Vec<String> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}: {}",
                c["reason"].as_str().or(c["type"].as_str()).unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!(
        "{code} status={} reason={} message={:?} causes={causes:?} retryAfterSeconds={} Retry-After={retry_after:?} details.kind={}",
        status["status"].as_str().unwrap_or(""),
        status["reason"].as_str().unwrap_or(""),
        status["message"].as_str().unwrap_or(""),
        status["details"]["retryAfterSeconds"],
        status["details"]["kind"].as_str().unwrap_or(""),
    )
}

async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    let mut found: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    found.sort_by_key(|p| p.metadata.name.clone());
    found
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn budget_state(pdb: &PodDisruptionBudget) -> String {
    let status = pdb.status.clone().unwrap_or_default();
    format!(
        "healthy {}/{} allowed {} expected {} disrupted {:?}",
        status.current_healthy,
        status.desired_healthy,
        status.disruptions_allowed,
        status.expected_pods,
        status
            .disrupted_pods
            .unwrap_or_default()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    )
}

/// Waits until every pod of the scenario that can run is Ready and every
/// budget has counted its pods.
pub async fn settled(client: &kube::Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = pods.list(&ListParams::default()).await.unwrap().items;
        let running = all.iter().filter(|p| ready(p)).count();
        let budgets = pdbs.list(&ListParams::default()).await.unwrap().items;
        let counted = budgets.iter().all(|b| {
            b.status.as_ref().is_some_and(|s| {
                s.observed_generation.unwrap_or(0) >= b.metadata.generation.unwrap_or(0)
            })
        });
        // web 4, frozen 2, spent 2, twice 1, db 2 (stuck never runs)
        if running == 11 && counted && budgets.len() == 7 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the probe's cluster did not settle: {running} pods Ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the probe; `client` has the rights of a cluster admin.
pub async fn probe(client: &kube::Client) -> Transcript {
    let mut t = Transcript::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    settled(client).await;

    // Discovery: where the Eviction API is.
    let resources = client.list_core_api_resources("v1").await.unwrap();
    let entry = resources
        .resources
        .iter()
        .find(|r| r.name == "pods/eviction")
        .map(|r| {
            format!(
                "kind={} group={:?} version={:?}",
                r.kind, r.group, r.version
            )
        })
        .unwrap_or_else(|| "absent".into());
    t.note("discovery: /api/v1 pods/eviction", entry);

    let frozen = pods_of(&pods, "frozen").await;
    let frozen_pod = frozen[0].metadata.name.clone().unwrap();
    t.name(&frozen_pod, "<frozen-pod>");
    t.note(
        "evict a pod whose budget allows none (policy/v1)",
        answer(&evict(client, &frozen_pod, eviction(&frozen_pod, "policy/v1")).await),
    );
    t.note(
        "evict a pod whose budget allows none (policy/v1beta1, as kubectl 1.20)",
        answer(&evict(client, &frozen_pod, eviction(&frozen_pod, "policy/v1beta1")).await),
    );

    let web = pods_of(&pods, "web").await;
    let (web_a, web_b) = (
        web[0].metadata.name.clone().unwrap(),
        web[1].metadata.name.clone().unwrap(),
    );
    t.name(&web_a, "<web-a>");
    t.name(&web_b, "<web-b>");
    let web_a_uid = web[0].metadata.uid.clone().unwrap();
    t.name(&web_a_uid, "<web-a-uid>");

    let mut dry = eviction(&web_a, "policy/v1");
    dry["deleteOptions"] = json!({"dryRun": ["All"]});
    t.note(
        "dry-run eviction of a pod its budget allows",
        answer(&evict(client, &web_a, dry).await),
    );
    let after_dry = pods.get(&web_a).await.unwrap();
    t.note(
        "after the dry run: the pod",
        format!(
            "terminating={}",
            after_dry.metadata.deletion_timestamp.is_some()
        ),
    );
    t.note(
        "after the dry run: budget web",
        budget_state(&pdbs.get("web").await.unwrap()),
    );

    t.note(
        "evict a pod that does not exist",
        answer(&evict(client, "nope", eviction("nope", "policy/v1")).await),
    );
    // A UID precondition that does not hold, on a pod its budget allows.
    let spent = pods_of(&pods, "spent").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let spent_uid = pods.get(&spent).await.unwrap().metadata.uid.unwrap();
    t.name(&spent, "<spent-pod>");
    t.name(&spent_uid, "<spent-uid>");
    let mut wrong_uid = eviction(&spent, "policy/v1");
    wrong_uid["deleteOptions"] =
        json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}});
    let mut dry_wrong_uid = wrong_uid.clone();
    dry_wrong_uid["deleteOptions"]["dryRun"] = json!(["All"]);
    t.note(
        "dry-run eviction with a UID precondition of another pod",
        answer(&evict(client, &spent, dry_wrong_uid).await),
    );
    t.note(
        "evict with a UID precondition of another pod",
        answer(&evict(client, &spent, wrong_uid).await),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.note(
        "a second after a refused UID precondition: budget spent",
        budget_state(&pdbs.get("spent").await.unwrap()),
    );
    t.note(
        "a second after a refused UID precondition: the pod",
        format!(
            "terminating={}",
            pods.get(&spent)
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        ),
    );

    let twice = pods_of(&pods, "twice").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    t.name(&twice, "<twice-pod>");
    for name in ["twice-a", "twice-b"] {
        t.note(
            &format!("a pod two budgets cover: budget {name}"),
            budget_state(&pdbs.get(name).await.unwrap()),
        );
    }
    t.note(
        "evict a pod two budgets cover",
        answer(&evict(client, &twice, eviction(&twice, "policy/v1")).await),
    );

    let stuck = pods
        .list(&ListParams::default().labels("app=stuck"))
        .await
        .unwrap()
        .items;
    let stuck = stuck[0].metadata.name.clone().unwrap();
    t.name(&stuck, "<pending-pod>");
    t.note(
        "evict a Pending pod whose budget allows none",
        answer(&evict(client, &stuck, eviction(&stuck, "policy/v1")).await),
    );

    // A real eviction, and what a client watching sees of the pod and its
    // budget until the budget allows a disruption again.
    let pod_version = pods
        .get(&web_a)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut pod_events = pods
        .watch(&WatchParams::default().labels("app=web"), &pod_version)
        .await
        .unwrap()
        .boxed();
    let pdb_version = pdbs
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut pdb_events = pdbs
        .watch(&WatchParams::default(), &pdb_version)
        .await
        .unwrap()
        .boxed();
    let mut with_uid = eviction(&web_a, "policy/v1");
    with_uid["deleteOptions"] = json!({"preconditions": {"uid": web_a_uid}});
    t.note(
        "evict a pod its budget allows",
        answer(&evict(client, &web_a, with_uid).await),
    );
    t.note(
        "right after: evict another pod of that budget",
        answer(&evict(client, &web_b, eviction(&web_b, "policy/v1")).await),
    );
    // What the budget says next depends on whether its controller has run
    // since (the pod's disruption recorded, or already seen terminating):
    // that it allows nothing does not.
    let right_after = pdbs.get("web").await.unwrap();
    println!(
        "right after the eviction: budget web: {}",
        budget_state(&right_after)
    );
    t.note(
        "right after the eviction: budget web allows",
        right_after
            .status
            .map_or(-1, |s| s.disruptions_allowed)
            .to_string(),
    );

    let mut seen_pod = Vec::new();
    let mut seen_budget: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut pod_gone = false;
    let mut recovered = false;
    while !(pod_gone && recovered) && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(Ok(event)) = pod_events.next() => {
                let (kind, pod) = match event {
                    WatchEvent::Added(p) => ("ADDED", p),
                    WatchEvent::Modified(p) => ("MODIFIED", p),
                    WatchEvent::Deleted(p) => ("DELETED", p),
                    _ => continue,
                };
                if pod.metadata.uid.as_deref() != Some(web_a_uid.as_str()) {
                    continue;
                }
                // The conditions a drain's client reads (a kubelet adds
                // others, which KWOK does not play).
                let conditions: Vec<String> = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.status == "True")
                    .filter(|c| matches!(c.type_.as_str(), "Ready" | "DisruptionTarget"))
                    .map(|c| c.type_.clone())
                    .collect();
                let line = format!(
                    "{kind} terminating={} phase={} true={conditions:?}",
                    pod.metadata.deletion_timestamp.is_some(),
                    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default(),
                );
                if seen_pod.last() != Some(&line) {
                    seen_pod.push(line);
                }
                pod_gone |= kind == "DELETED";
            }
            Some(Ok(event)) = pdb_events.next() => {
                let pdb = match event {
                    WatchEvent::Modified(p) | WatchEvent::Added(p) => p,
                    _ => continue,
                };
                if pdb.metadata.name.as_deref() != Some("web") {
                    continue;
                }
                let state = budget_state(&pdb);
                if seen_budget.last() != Some(&state) {
                    seen_budget.push(state);
                }
                recovered |= pdb.status.as_ref().is_some_and(|s| s.disruptions_allowed == 1);
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    t.note("the evicted pod, watched", seen_pod.join(" -> "));
    // The real controllers' intermediate states depend on when they run: the
    // first change (the eviction's own) and the last are what a client can
    // rely on; the whole sequence is printed.
    println!(
        "budget web, every state watched: {}",
        seen_budget.join(" -> ")
    );
    t.note(
        "budget web, watched: the first change and the state it settles in",
        format!(
            "{} ... {}",
            seen_budget.first().cloned().unwrap_or_default(),
            seen_budget.last().cloned().unwrap_or_default()
        ),
    );

    // A StatefulSet pod, recreated under its name.
    let db0 = pods.get("db-0").await.unwrap();
    let db0_uid = db0.metadata.uid.clone().unwrap();
    let mut with_uid = eviction("db-0", "policy/v1");
    with_uid["deleteOptions"] = json!({"preconditions": {"uid": db0_uid}});
    t.note("evict db-0", answer(&evict(client, "db-0", with_uid).await));
    let started = Instant::now();
    let mut recreated_ready = None;
    let mut allowed_again = None;
    while started.elapsed() < Duration::from_secs(25) && allowed_again.is_none() {
        if recreated_ready.is_none()
            && let Ok(pod) = pods.get("db-0").await
            && pod.metadata.uid.as_deref() != Some(db0_uid.as_str())
            && ready(&pod)
        {
            recreated_ready = Some(started.elapsed());
        }
        let pdb = pdbs.get("db").await.unwrap();
        if recreated_ready.is_some()
            && pdb
                .status
                .as_ref()
                .is_some_and(|s| s.disruptions_allowed == 1)
        {
            allowed_again = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.note(
        "db-0 recreated under its name: budget db allows one again within 20 s of the new pod's Ready",
        match (recreated_ready, allowed_again) {
            (Some(r), Some(a)) if a - r < Duration::from_secs(20) => "yes".to_string(),
            (Some(_), _) => format!(
                "no: {}",
                budget_state(&pdbs.get("db").await.unwrap())
            ),
            (None, _) => "db-0 was not recreated".into(),
        },
    );

    // A budget whose status lags its spec.
    pdbs.patch(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minAvailable": 1}})),
    )
    .await
    .unwrap();
    let frozen_b = frozen[1].metadata.name.clone().unwrap();
    t.name(&frozen_b, "<frozen-pod-b>");
    t.note(
        "right after a budget's spec changed: evict one of its pods",
        answer(&evict(client, &frozen_b, eviction(&frozen_b, "policy/v1")).await),
    );
    t
}
