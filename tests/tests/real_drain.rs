//! The drain engine against the real control plane: the cases of
//! coordinator/tests/drain_engine.rs (which runs them on kubesim) on one real
//! cluster, each in a namespace of its own, with the engine using the
//! coordinator's identity (its RBAC role, nothing more) and the auditor
//! judging at the end. Workloads are placed by the real scheduler, so they
//! carry the constraints that make placement certain.
//!
//! Needs root and scripts/build-testbed.sh; recorded as skipped otherwise.

use std::time::{Duration, Instant};

use k3sfleet_coordinator::drain::{
    Claimant, Cordoned, DrainEngine, DrainOptions, Owner, TimeoutPolicy, cordon_and_drain,
};
use k3sfleet_proto::v1::{DrainEvent, DrainOutcome, DrainResult, PodBlocked, drain_event};
use k3sfleet_sim::lab::real::COORDINATOR_USER;
use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_tests::real::{apply, assert_audit_clean, kubectl_ok, real_lab, real_lab_dir, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

/// Two pools of two workers: pool a (worker-1, worker-2), pool b (worker-3, worker-4).
const CLUSTER: &str = r#"
[cluster]
time_scale = 1.0
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
labels = { pool = "a", "node-role.kubernetes.io/worker" = "true" }
[[nodes]]
name = "worker-2"
labels = { pool = "a", "node-role.kubernetes.io/worker" = "true" }
[[nodes]]
name = "worker-3"
labels = { pool = "b", "node-role.kubernetes.io/worker" = "true" }
[[nodes]]
name = "worker-4"
labels = { pool = "b", "node-role.kubernetes.io/worker" = "true" }
"#;

/// A Deployment of `replicas` pods spread evenly over `pool` (cordoned nodes
/// excluded: `nodeTaintsPolicy: Honor`), Ready `ready` after scheduling.
fn deployment(namespace: &str, name: &str, replicas: u32, pool: &str, ready: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
        pod-ready.stage.kwok.x-k8s.io/delay: {ready}
        pod-delete.stage.kwok.x-k8s.io/delay: 300ms
    spec:
      nodeSelector: {{pool: {pool}}}
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        nodeTaintsPolicy: Honor
        labelSelector:
          matchLabels: {{app: {name}}}
      containers:
      - name: {name}
        image: registry.k8s.io/pause:3.10
"#
    )
}

fn pdb(namespace: &str, name: &str, app: &str, budget: &str) -> String {
    format!(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    matchLabels: {{app: {app}}}
  {budget}
"#
    )
}

struct Drains {
    engine: DrainEngine,
    pods: Api<Pod>,
}

impl Drains {
    async fn new(lab: &Lab) -> Drains {
        // The coordinator's own client construction, with its identity.
        let client =
            k3sfleet_coordinator::kube::client(&lab.real().coordinator_kubeconfig_local, None)
                .await
                .expect("the coordinator's client");
        let operator = k3sfleet_sim::lab::real::client_from(lab.real().operator_kubeconfig.clone())
            .await
            .unwrap();
        Drains {
            engine: DrainEngine::new(client),
            pods: Api::all(operator),
        }
    }

    async fn pods_on(&self, namespace: &str, node: &str) -> Vec<Pod> {
        self.pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Waits until `namespace` has `count` Ready pods, and its budgets have counted them.
    async fn settled(&self, lab: &Lab, namespace: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self
                .pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            let budgets = kubectl_ok(
                lab,
                &[
                    "get",
                    "pdb",
                    "-n",
                    namespace,
                    "-o",
                    "jsonpath={.items[*].status.currentHealthy}",
                ],
            );
            let counted = budgets
                .split_whitespace()
                .all(|n| n.parse::<usize>().unwrap_or(0) >= count.min(1));
            if ready == count && counted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{namespace}: {ready} of {count} pods Ready after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn drain(
    engine: &DrainEngine,
    node: &str,
    options: DrainOptions,
) -> (DrainResult, Vec<DrainEvent>) {
    let (events, mut received) = mpsc::channel(4096);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = received.recv().await {
            all.push(event);
        }
        all
    });
    let result = tokio::time::timeout(
        options.timeout + WAIT,
        engine.drain(node, &options, events, CancellationToken::new()),
    )
    .await
    .expect("the drain ends within its own timeout")
    .expect("the drain starts");
    (result, collector.await.unwrap())
}

fn outcome(result: &DrainResult) -> DrainOutcome {
    DrainOutcome::try_from(result.outcome).unwrap()
}

fn blocked(events: &[DrainEvent]) -> Vec<&PodBlocked> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(drain_event::Event::Blocked(b)) => Some(b),
            _ => None,
        })
        .collect()
}

fn gone_uids(events: &[DrainEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(drain_event::Event::Gone(g)) => g.pod.as_ref().map(|p| p.uid.clone()),
            _ => None,
        })
        .collect()
}

fn plan_of(events: &[DrainEvent]) -> &k3sfleet_proto::v1::DrainPlan {
    events
        .iter()
        .find_map(|e| match &e.event {
            Some(drain_event::Event::Plan(p)) => Some(p),
            _ => None,
        })
        .expect("the drain sends its plan first")
}

fn options(timeout: Duration) -> DrainOptions {
    DrainOptions {
        delete_emptydir_data: true,
        timeout,
        ..Default::default()
    }
}

fn owner() -> Owner {
    Owner::Drain("admin:real-tier-test".into())
}

fn nothing_live(_: &Owner) -> bool {
    false
}

fn unschedulable(lab: &Lab, node: &str) -> bool {
    tokio::task::block_in_place(|| lab.cordoned_nodes()).contains(&node.to_string())
}

/// The audit log's eviction answers in `namespace` by `user`: (code, count).
fn evictions_in(lab: &Lab, namespace: &str, user: &str) -> Vec<(u16, usize)> {
    let records = tokio::task::block_in_place(|| lab.real().auditor().audit_records());
    let mut counts = std::collections::BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.is_eviction() && r.namespace == namespace && r.user == user)
    {
        *counts.entry(record.code).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_engine_keeps_every_budget_on_the_real_control_plane() {
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::new(CLUSTER, "real_drain").unwrap()).await else {
        return;
    };
    let drains = Drains::new(&lab).await;
    let engine = &drains.engine;
    let mut timings = Vec::new();

    // 1. worker-1 holds two of web's four pods and web's budget allows one
    // disruption: the second eviction is refused (429) until the first one's
    // replacement is Ready (2 s), and the engine says so while it waits.
    let check = Instant::now();
    apply(&lab, &deployment("budget", "web", 4, "a", "2s"));
    apply(&lab, &pdb("budget", "web", "web", "minAvailable: 3"));
    drains.settled(&lab, "budget", 4).await;
    assert_eq!(
        drains.pods_on("budget", "worker-1").await.len(),
        2,
        "2 of 4 on worker-1"
    );
    assert_eq!(
        engine.cordon("worker-1", &owner()).await.unwrap(),
        Cordoned::Now
    );
    let (result, events) = drain(engine, "worker-1", options(WAIT)).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    let refusals = blocked(&events);
    assert!(!refusals.is_empty(), "the budget never refused");
    for refusal in &refusals {
        assert_eq!(refusal.pdb, "budget/web", "{refusal:?}");
        assert!(refusal.pod.as_ref().unwrap().name.starts_with("web-"));
        // Three healthy, or four once the replacement is Ready while the
        // budget still allows nothing: it counts the evicted pod as disrupted
        // until the disruption controller sees it go, or that controller has
        // not yet recomputed it. The engine must say which.
        assert_eq!(refusal.desired_healthy, 3, "{refusal:?}");
        match refusal.current_healthy {
            3 => {}
            4 => assert!(
                refusal
                    .message
                    .contains("as disrupted by an earlier eviction")
                    || refusal.message.contains("the disruption controller"),
                "{refusal:?}"
            ),
            _ => panic!("{refusal:?}"),
        }
        assert!(refusal.message.contains("disruption budget"), "{refusal:?}");
    }
    assert!(
        result
            .waits
            .iter()
            .any(|w| w.reason == "pdb budget/web" && w.millis > 0),
        "{:?}",
        result.waits
    );
    let mut planned: Vec<String> = plan_of(&events)
        .evict
        .iter()
        .map(|p| p.uid.clone())
        .collect();
    let mut gone = gone_uids(&events);
    planned.sort();
    gone.sort();
    assert_eq!(planned, gone);
    assert!(drains.pods_on("budget", "worker-1").await.is_empty());
    assert!(unschedulable(&lab, "worker-1"));
    let answers = evictions_in(&lab, "budget", COORDINATOR_USER);
    assert!(
        answers.iter().any(|(code, n)| *code == 429 && *n >= 1)
            && answers.iter().any(|(code, n)| *code == 201 && *n == 2),
        "the API server's answers to the coordinator: {answers:?}"
    );
    engine.uncordon("worker-1", &owner()).await.unwrap();
    timings.push(("budget exhausted then recovering", check.elapsed()));

    // 2. A StatefulSet replaces its pod under the same name once the old
    // one is gone: the engine sees the old UID go, finishes, never touches
    // the new pod.
    let check = Instant::now();
    apply(
        &lab,
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: sts
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: sts
spec:
  replicas: 3
  serviceName: db
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
      annotations:
        pod-ready.stage.kwok.x-k8s.io/delay: 1s
        pod-delete.stage.kwok.x-k8s.io/delay: 300ms
    spec:
      nodeSelector: {node-role.kubernetes.io/worker: "true"}
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        nodeTaintsPolicy: Honor
        labelSelector:
          matchLabels: {app: db}
      containers:
      - name: db
        image: registry.k8s.io/pause:3.10
"#,
    );
    apply(&lab, &pdb("sts", "db", "db", "maxUnavailable: 1"));
    drains.settled(&lab, "sts", 3).await;
    let db0 = drains
        .pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some("sts")
                && p.metadata.name.as_deref() == Some("db-0")
        })
        .expect("db-0");
    let node = db0.spec.as_ref().unwrap().node_name.clone().unwrap();
    let old_uid = db0.metadata.uid.clone().unwrap();
    engine.cordon(&node, &owner()).await.unwrap();
    let (result, events) = drain(engine, &node, options(WAIT)).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    let sts_gone: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(drain_event::Event::Gone(g)) => g
                .pod
                .as_ref()
                .filter(|p| p.namespace == "sts")
                .map(|p| p.uid.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(sts_gone, std::slice::from_ref(&old_uid));
    let mut replacement = None;
    wait("the StatefulSet to recreate db-0", WAIT, || {
        replacement = tokio::task::block_in_place(|| lab.pods())
            .into_iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some("sts")
                    && p.metadata.name.as_deref() == Some("db-0")
            })
            .filter(|p| p.metadata.uid.as_deref() != Some(old_uid.as_str()));
        replacement.is_some()
    });
    let replacement = replacement.unwrap();
    assert_ne!(
        replacement.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    assert!(
        replacement.metadata.deletion_timestamp.is_none(),
        "the new pod was evicted"
    );
    assert_eq!(
        evictions_in(&lab, "sts", COORDINATOR_USER),
        [(201, 1)],
        "one eviction, of the old pod only"
    );
    engine.uncordon(&node, &owner()).await.unwrap();
    timings.push(("StatefulSet pod recreated under its name", check.elapsed()));

    // 3. A budget that allows nothing ends the drain at its deadline naming
    // the budget, how long, and its healthy counts; other pods still went.
    let check = Instant::now();
    apply(&lab, &deployment("stuck", "web", 4, "b", "1s"));
    apply(&lab, &deployment("stuck", "api", 2, "b", "1s"));
    apply(&lab, &pdb("stuck", "web", "web", "minAvailable: 4"));
    drains.settled(&lab, "stuck", 6).await;
    engine.cordon("worker-3", &owner()).await.unwrap();
    let timeout = Duration::from_secs(4);
    let (result, events) = drain(engine, "worker-3", options(timeout)).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(
        result.message.starts_with("blocked by PDB stuck/web for ")
            && result.message.contains("(4/4 healthy)"),
        "{}",
        result.message
    );
    assert!(result.elapsed_ms >= timeout.as_millis() as u64);
    assert!(blocked(&events).len() >= 2, "{:?}", blocked(&events));
    assert!(
        drains.pods_on("stuck", "worker-3").await.iter().all(|p| p
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .starts_with("web-")),
        "api's pods went despite web's budget"
    );
    timings.push(("timeout naming the blocking budget", check.elapsed()));

    // 4. An operator cordoned worker-4 by hand: a drain that does not finish
    // leaves it cordoned even under the uncordon policy. A node the drain
    // cordoned itself is uncordoned under that policy.
    let check = Instant::now();
    kubectl_ok(&lab, &["cordon", "worker-4"]);
    let claimant = Claimant {
        owner: owner(),
        is_live: &nothing_live,
    };
    let short = options(Duration::from_secs(2));
    let run = |node: &'static str| {
        let claimant = &claimant;
        let short = &short;
        async move {
            let (events, mut received) = mpsc::channel(4096);
            let collector = tokio::spawn(async move { while received.recv().await.is_some() {} });
            let result = cordon_and_drain(
                engine,
                node,
                claimant,
                short,
                TimeoutPolicy::Uncordon,
                events,
                CancellationToken::new(),
            )
            .await
            .expect("the drain starts");
            collector.await.unwrap();
            result
        }
    };
    let result = run("worker-4").await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(result.left_cordoned, "{result:?}");
    assert!(
        result.message.contains("left cordoned"),
        "{}",
        result.message
    );
    assert!(
        unschedulable(&lab, "worker-4"),
        "the operator's cordon was lifted"
    );
    kubectl_ok(&lab, &["uncordon", "worker-4"]);
    let result = run("worker-4").await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(
        !result.left_cordoned && result.message.ends_with("; uncordoned"),
        "{result:?}"
    );
    assert!(!unschedulable(&lab, "worker-4"));
    timings.push(("an operator's cordon stays", check.elapsed()));

    // 3, continued: once the budget is relaxed, draining again finishes.
    kubectl_ok(
        &lab,
        &[
            "patch",
            "pdb",
            "-n",
            "stuck",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":2}}"#,
        ],
    );
    let (result, _) = drain(engine, "worker-3", options(WAIT)).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert!(drains.pods_on("stuck", "worker-3").await.is_empty());
    engine.uncordon("worker-3", &owner()).await.unwrap();

    // 5. Pods the Eviction API would refuse (two budgets: the real API
    // answers 500) stop the drain before any eviction, named.
    let check = Instant::now();
    apply(
        &lab,
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: twice
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: twice
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      nodeSelector: {kubernetes.io/hostname: worker-1}
      containers:
      - name: web
        image: registry.k8s.io/pause:3.10
"#,
    );
    apply(&lab, &pdb("twice", "web", "web", "maxUnavailable: 1"));
    apply(&lab, &pdb("twice", "web-too", "web", "maxUnavailable: 1"));
    drains.settled(&lab, "twice", 2).await;
    let victim = drains.pods_on("twice", "worker-1").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    // What the API server itself says to an eviction of such a pod.
    let evict = kubectl(&lab)
        .args([
            "create",
            "--raw",
            &format!("/api/v1/namespaces/twice/pods/{victim}/eviction"),
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}","namespace":"twice"}},"dryRun":["All"]}}"#
    );
    let output = feed(evict, &body);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(
                "more than one PodDisruptionBudget, which the eviction subresource does not support"
            ),
        "{stderr}"
    );
    let (result, events) = drain(engine, "worker-1", options(WAIT)).await;
    assert_eq!(outcome(&result), DrainOutcome::Failed, "{}", result.message);
    assert!(
        result.message.contains("cannot be evicted")
            && result
                .message
                .contains("PodDisruptionBudgets (twice/web, twice/web-too)"),
        "{}",
        result.message
    );
    assert_eq!(plan_of(&events).refused.len(), 2);
    assert!(
        evictions_in(&lab, "twice", COORDINATOR_USER).is_empty(),
        "an eviction was sent"
    );
    assert_eq!(drains.pods_on("twice", "worker-1").await.len(), 2);
    timings.push(("a pod under two budgets refused", check.elapsed()));

    assert_audit_clean(&lab);
    for (check, took) in timings {
        println!("real tier: {check}: {:.1}s", took.as_secs_f64());
    }
    lab.shutdown().await;
}

fn kubectl(lab: &Lab) -> std::process::Command {
    k3sfleet_tests::real::kubectl(lab)
}

fn feed(mut child: std::process::Child, input: &str) -> std::process::Output {
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    tokio::task::block_in_place(|| child.wait_with_output()).unwrap()
}
