//! The drain engine against the simulated cluster (kubesim, in-process): the
//! real Eviction API rules, controllers that replace evicted pods, and a count
//! of PDB violations that must stay at zero.

use std::time::Duration;

use k3sfleet_coordinator::drain::{
    DrainEngine, DrainOptions, RetryPolicy, TimeoutPolicy, cordon_and_drain,
};
use k3sfleet_kubesim::{Faults, KubeSim, Running, Scenario};
use k3sfleet_proto::v1::{DrainEvent, DrainOutcome, DrainResult, PodBlocked, drain_event};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous: the machine is a shared, noisy 2-core box.
const WAIT: Duration = Duration::from_secs(60);

struct Sim {
    sim: Running,
    engine: DrainEngine,
    _dir: tempfile::TempDir,
}

impl Sim {
    async fn start(scenario: Scenario) -> Sim {
        let sim = KubeSim::start(&scenario, "127.0.0.1:0")
            .await
            .expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        // The coordinator's own client construction, as in production.
        let client = k3sfleet_coordinator::kube::client(&kubeconfig, None)
            .await
            .expect("client");
        Sim {
            sim,
            engine: DrainEngine::new(client),
            _dir: dir,
        }
    }

    async fn file(name: &str) -> Sim {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kubesim/scenarios")
            .join(name);
        Sim::start(Scenario::from_file(&path).expect("scenario")).await
    }

    async fn toml(text: &str) -> Sim {
        Sim::start(Scenario::from_toml(text, "test scenario").expect("scenario")).await
    }

    fn pods_on(&self, node: &str) -> Vec<Pod> {
        self.sim.inspect(|c| {
            c.pods
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .map(|p| (**p).clone())
                .collect()
        })
    }

    fn names_on(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods_on(node)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    fn unschedulable(&self, node: &str) -> bool {
        self.sim.inspect(|c| {
            c.nodes
                .get("", node)
                .and_then(|n| n.spec.as_ref().and_then(|s| s.unschedulable))
                .unwrap_or(false)
        })
    }

    fn assert_no_violations(&self) {
        let stats = self.sim.stats();
        assert_eq!(stats.pdb_violations, 0, "{:?}", stats.violations);
    }
}

/// Runs `drain` and returns its result with every event it sent.
async fn drain(
    engine: &DrainEngine,
    node: &str,
    options: DrainOptions,
) -> (DrainResult, Vec<DrainEvent>) {
    let (events, mut received) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = received.recv().await {
            all.push(event);
        }
        all
    });
    let result = tokio::time::timeout(
        WAIT,
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

fn options() -> DrainOptions {
    DrainOptions {
        delete_emptydir_data: true,
        timeout: WAIT,
        ..Default::default()
    }
}

/// worker-1 holds two of web's four pods and web's budget allows one
/// disruption: the second eviction is refused until the first one's
/// replacement is Ready, and the engine says so while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_exhausted_then_recovering_delays_but_never_breaks() {
    let sim = Sim::file("drain-blocked.toml").await;
    let web_on_node = sim
        .names_on("worker-1")
        .iter()
        .filter(|n| n.starts_with("web-"))
        .count();
    assert_eq!(
        web_on_node,
        2,
        "precondition: {:?}",
        sim.names_on("worker-1")
    );

    let cordon = sim.engine.cordon("worker-1").await.unwrap();
    assert!(!cordon.was_unschedulable);
    let (result, events) = drain(&sim.engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );

    let plan = plan_of(&events);
    let refusals = blocked(&events);
    assert!(!refusals.is_empty(), "the budget never refused");
    for refusal in &refusals {
        assert_eq!(refusal.pdb, "shop/web");
        assert!(refusal.pod.as_ref().unwrap().name.starts_with("web-"));
        assert_eq!(refusal.desired_healthy, 3, "{refusal:?}");
        assert_eq!(refusal.current_healthy, 3, "{refusal:?}");
        assert!(refusal.message.contains("disruption budget"), "{refusal:?}");
    }
    assert!(
        result
            .waits
            .iter()
            .any(|w| w.reason == "pdb shop/web" && w.millis > 0),
        "{:?}",
        result.waits
    );
    assert!(
        result.waits.iter().any(|w| w.reason == "pod termination"),
        "{:?}",
        result.waits
    );

    // Every planned pod went, by UID, and only DaemonSet pods remain.
    let mut planned: Vec<String> = plan.evict.iter().map(|p| p.uid.clone()).collect();
    let mut gone = gone_uids(&events);
    planned.sort();
    gone.sort();
    assert_eq!(planned, gone);
    assert_eq!(result.evicted as usize, planned.len());
    let left = sim.names_on("worker-1");
    assert!(
        left.iter().all(|n| n.starts_with("node-agent-")),
        "{left:?}"
    );
    assert!(sim.unschedulable("worker-1"));

    let stats = sim.sim.stats();
    assert!(
        stats
            .evictions_refused
            .get("shop/web")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

/// The StatefulSet replaces its pod under the same name the moment the old
/// one is gone: the engine sees the old UID go, finishes, and never touches
/// the new pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_pod_recreated_under_its_name_counts_as_gone() {
    let sim = Sim::toml(
        r#"
        [timings]
        replacement_delay = 0
        ready_delay = 1
        termination = 1
        [[nodes]]
        name = "worker-1"
        [[nodes]]
        name = "worker-2"
        [[nodes]]
        name = "worker-3"
        [[statefulsets]]
        namespace = "data"
        name = "db"
        replicas = 3
        [[pdbs]]
        namespace = "data"
        name = "db"
        selector = { app = "db" }
        max_unavailable = 1
        "#,
    )
    .await;
    let before = sim.pods_on("worker-1");
    assert_eq!(before.len(), 1, "precondition: one db pod per node");
    let name = before[0].metadata.name.clone().unwrap();
    let old_uid = before[0].metadata.uid.clone().unwrap();

    sim.engine.cordon("worker-1").await.unwrap();
    let (result, events) = drain(&sim.engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert_eq!(gone_uids(&events), std::slice::from_ref(&old_uid));

    let replacement = sim
        .sim
        .inspect(|c| c.pods.get("data", &name).map(|p| (**p).clone()))
        .expect("the StatefulSet recreated its pod");
    assert_ne!(replacement.metadata.uid.as_deref(), Some(old_uid.as_str()));
    assert_ne!(
        replacement.spec.as_ref().unwrap().node_name.as_deref(),
        Some("worker-1")
    );
    assert!(
        replacement.metadata.deletion_timestamp.is_none(),
        "the new pod was evicted"
    );
    assert_eq!(sim.sim.stats().evictions_accepted, 1);
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

/// Without a cordon (the engine never cordons) the StatefulSet recreates its
/// pod on the very node being drained: same name, same node, new UID. The
/// drain is done with the old pod and leaves the new one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_recreated_on_the_same_node_is_not_chased() {
    let sim = Sim::toml(
        r#"
        [timings]
        replacement_delay = 0
        ready_delay = 1
        termination = 1
        [[nodes]]
        name = "worker-1"
        [[statefulsets]]
        namespace = "data"
        name = "db"
        replicas = 1
        "#,
    )
    .await;
    let old_uid = sim.pods_on("worker-1")[0].metadata.uid.clone().unwrap();
    let (result, events) = drain(&sim.engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert_eq!(gone_uids(&events), std::slice::from_ref(&old_uid));
    let now_on_node = sim.pods_on("worker-1");
    assert_eq!(now_on_node.len(), 1);
    assert_eq!(now_on_node[0].metadata.name.as_deref(), Some("db-0"));
    assert_ne!(
        now_on_node[0].metadata.uid.as_deref(),
        Some(old_uid.as_str())
    );
    assert!(now_on_node[0].metadata.deletion_timestamp.is_none());
    assert_eq!(sim.sim.stats().evictions_accepted, 1);
    sim.sim.shutdown().await;
}

/// With a retry timer far longer than the drain's deadline, only the
/// watched budget status can trigger the retry that finishes the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_eviction_is_retried_when_the_budget_recovers_not_on_a_timer() {
    let sim = Sim::file("drain-blocked.toml").await;
    let hour = Duration::from_secs(3600);
    let engine = sim.engine.clone().with_retry_policy(RetryPolicy {
        first: hour,
        max: hour,
    });
    engine.cordon("worker-1").await.unwrap();
    let (result, events) = drain(&engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert!(!blocked(&events).is_empty(), "the budget never refused");
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

const NEVER_RECOVERS: &str = r#"
    [timings]
    replacement_delay = 1
    ready_delay = 1
    termination = 1
    [[nodes]]
    name = "worker-1"
    labels = { pool = "a" }
    [[nodes]]
    name = "worker-2"
    labels = { pool = "a" }
    [[deployments]]
    namespace = "shop"
    name = "web"
    replicas = 4
    node_selector = { pool = "a" }
    [[deployments]]
    namespace = "shop"
    name = "api"
    replicas = 2
    [[pdbs]]
    namespace = "shop"
    name = "web"
    selector = { app = "web" }
    min_available = 4
"#;

/// A budget that allows nothing ends the drain at its deadline with the
/// budget, how long, and its healthy counts; other pods still went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_finish_times_out_saying_why() {
    let sim = Sim::toml(NEVER_RECOVERS).await;
    sim.engine.cordon("worker-1").await.unwrap();
    let timeout = Duration::from_secs(4);
    let (result, events) = drain(
        &sim.engine,
        "worker-1",
        DrainOptions {
            timeout,
            ..options()
        },
    )
    .await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(
        result.message.starts_with("blocked by PDB shop/web for ")
            && result.message.contains("(4/4 healthy)"),
        "{}",
        result.message
    );
    assert!(result.elapsed_ms >= timeout.as_millis() as u64);
    // Retried with backoff and reported every time, never silent.
    assert!(blocked(&events).len() >= 2, "{:?}", blocked(&events));
    let pdb_wait = result
        .waits
        .iter()
        .find(|w| w.reason == "pdb shop/web")
        .unwrap();
    assert!(pdb_wait.millis >= 2000, "{pdb_wait:?}");
    // The api pods on the node were not held up by web's budget.
    assert!(
        sim.names_on("worker-1")
            .iter()
            .all(|n| n.starts_with("web-"))
    );
    sim.assert_no_violations();

    // Running it again once the budget is relaxed finishes the job.
    relax_budget(&sim, "shop", "web").await;
    let (result, _) = drain(&sim.engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert!(sim.names_on("worker-1").is_empty());
    sim.sim.shutdown().await;
}

async fn relax_budget(sim: &Sim, namespace: &str, name: &str) {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Api, Patch, PatchParams};
    let client = kube::Client::try_from(kube::Config::new(sim.sim.url().parse().unwrap())).unwrap();
    Api::<PodDisruptionBudget>::namespaced(client, namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "minAvailable": 2 } })),
        )
        .await
        .unwrap();
}

/// An operator cordoned the node before: a drain that does not finish never
/// uncordons it, even with the uncordon policy; a node the drain cordoned
/// itself is uncordoned under that policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_the_drain_cordoned_are_ever_uncordoned() {
    let sim = Sim::toml(NEVER_RECOVERS).await;
    let short = DrainOptions {
        timeout: Duration::from_secs(2),
        ..options()
    };
    let run = |policy, cancel: CancellationToken| {
        let (events, mut received) = mpsc::channel(1024);
        let engine = sim.engine.clone();
        let short = short.clone();
        async move {
            let drain = tokio::spawn(async move {
                cordon_and_drain(&engine, "worker-1", &short, policy, events, cancel).await
            });
            let mut all = Vec::new();
            while let Some(event) = received.recv().await {
                all.push(event);
            }
            (drain.await.unwrap().unwrap(), all)
        }
    };

    // Cordoned by the drain, timed out, policy uncordon: schedulable again.
    let (result, events) = run(TimeoutPolicy::Uncordon, CancellationToken::new()).await;
    assert_eq!(outcome(&result), DrainOutcome::TimedOut);
    assert!(
        !result.left_cordoned && result.message.ends_with("; uncordoned"),
        "{result:?}"
    );
    assert!(!sim.unschedulable("worker-1"));
    assert!(matches!(
        &events[0].event,
        Some(drain_event::Event::Cordoned(c)) if !c.was_unschedulable
    ));

    // Cordoned by an operator first.
    sim.engine.cordon("worker-1").await.unwrap();
    let (result, events) = run(TimeoutPolicy::Uncordon, CancellationToken::new()).await;
    assert_eq!(outcome(&result), DrainOutcome::TimedOut);
    assert!(result.left_cordoned, "{result:?}");
    assert!(
        result.message.contains("left cordoned"),
        "{}",
        result.message
    );
    assert!(sim.unschedulable("worker-1"));
    assert!(matches!(
        &events[0].event,
        Some(drain_event::Event::Cordoned(c)) if c.was_unschedulable
    ));

    // An aborted drain: the same.
    let cancel = CancellationToken::new();
    let cancel_soon = cancel.clone();
    let aborter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel_soon.cancel();
    });
    let started = tokio::time::Instant::now();
    let (result, _) = run(TimeoutPolicy::Uncordon, cancel).await;
    aborter.await.unwrap();
    assert_eq!(outcome(&result), DrainOutcome::Failed);
    assert!(
        result.message.starts_with("cancelled"),
        "{}",
        result.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancellation was not prompt"
    );
    assert!(result.left_cordoned && sim.unschedulable("worker-1"));

    // The default policy leaves a node the drain cordoned cordoned.
    sim.engine.uncordon("worker-1").await.unwrap();
    let (result, _) = run(TimeoutPolicy::LeaveCordoned, CancellationToken::new()).await;
    assert_eq!(outcome(&result), DrainOutcome::TimedOut);
    assert!(result.left_cordoned && sim.unschedulable("worker-1"));
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

/// The dry run lists what would happen and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_reports_and_changes_nothing() {
    let sim = Sim::file("drain-blocked.toml").await;
    let before = sim.names_on("worker-1");
    let plan = sim
        .engine
        .plan("worker-1", &DrainOptions::default())
        .await
        .unwrap();

    let mut listed: Vec<String> = plan
        .evict
        .iter()
        .chain(plan.skipped.iter().filter_map(|s| s.pod.as_ref()))
        .chain(plan.refused.iter().filter_map(|s| s.pod.as_ref()))
        .map(|p| p.name.clone())
        .collect();
    listed.sort();
    assert_eq!(listed, before, "every pod of the node is accounted for");
    assert!(
        plan.skipped.iter().all(|s| s.reason == "DaemonSet pod"),
        "{:?}",
        plan.skipped
    );
    assert!(!plan.skipped.is_empty());
    for refused in &plan.refused {
        let name = &refused.pod.as_ref().unwrap().name;
        assert!(name.starts_with("cache-"), "{refused:?}");
        assert!(
            refused.reason.contains("--delete-emptydir-data"),
            "{refused:?}"
        );
    }
    let web = plan
        .blocking
        .iter()
        .find(|b| b.pdb == "shop/web")
        .expect("web blocks");
    assert_eq!((web.desired_healthy, web.disruptions_allowed), (3, 1));
    assert_eq!(web.pods.len(), 2);

    assert_eq!(sim.names_on("worker-1"), before);
    assert!(!sim.unschedulable("worker-1"));
    assert_eq!(sim.sim.stats().evictions_accepted, 0);
    assert!(matches!(
        sim.engine.plan("worker-9", &DrainOptions::default()).await,
        Err(k3sfleet_coordinator::drain::DrainError::NodeNotFound { .. })
    ));
    sim.sim.shutdown().await;
}

/// Pods that need an option, or that the Eviction API would refuse (two
/// budgets), stop the drain before anything is evicted, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pods_stop_the_drain_before_any_eviction() {
    let sim = Sim::toml(
        r#"
        [[nodes]]
        name = "worker-1"
        [[deployments]]
        namespace = "shop"
        name = "web"
        replicas = 2
        [[pods]]
        namespace = "default"
        name = "debug"
        node = "worker-1"
        [[pdbs]]
        namespace = "shop"
        name = "web"
        selector = { app = "web" }
        max_unavailable = 1
        [[pdbs]]
        namespace = "shop"
        name = "web-too"
        selector = { app = "web" }
        max_unavailable = 1
        "#,
    )
    .await;
    sim.engine.cordon("worker-1").await.unwrap();
    let (result, events) = drain(&sim.engine, "worker-1", options()).await;
    assert_eq!(outcome(&result), DrainOutcome::Failed);
    assert!(
        result.message.starts_with(
            "cannot drain worker-1: 3 pods cannot be evicted: default/debug (has no controller"
        ),
        "{}",
        result.message
    );
    assert!(
        result
            .message
            .contains("PodDisruptionBudgets (shop/web, shop/web-too)"),
        "{}",
        result.message
    );
    assert_eq!(plan_of(&events).refused.len(), 3);
    assert_eq!(sim.sim.stats().evictions_accepted, 0);
    assert_eq!(sim.names_on("worker-1").len(), 3);
    sim.sim.shutdown().await;
}

/// The API server failing for a while (500s) slows the drain; it does not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_and_reported() {
    let sim = Sim::file("drain-blocked.toml").await;
    let engine = sim.engine.clone().with_retry_policy(RetryPolicy {
        first: Duration::from_millis(200),
        max: Duration::from_secs(1),
    });
    sim.engine.cordon("worker-1").await.unwrap();
    let (events, mut received) = mpsc::channel(1024);
    let drain = tokio::spawn(async move {
        engine
            .drain("worker-1", &options(), events, CancellationToken::new())
            .await
    });
    let mut all = Vec::new();
    while let Some(event) = received.recv().await {
        if matches!(event.event, Some(drain_event::Event::Plan(_))) {
            sim.sim.inject_faults(&Faults {
                latency_ms: 0,
                errors_for_seconds: 1.5,
            });
        }
        all.push(event);
    }
    let result = drain.await.unwrap().unwrap();
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    let api_refusals: Vec<_> = blocked(&all)
        .into_iter()
        .filter(|b| b.pdb.is_empty())
        .collect();
    assert!(
        !api_refusals.is_empty(),
        "the injected errors were not seen"
    );
    assert!(
        api_refusals.iter().all(|b| b.message.starts_with("500")),
        "{api_refusals:?}"
    );
    assert!(
        result.waits.iter().any(|w| w.reason == "api errors"),
        "{:?}",
        result.waits
    );
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

/// What the rollout planner reads: live budgets and healthy pods per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_count_healthy_pods_per_node() {
    let sim = Sim::file("drain-blocked.toml").await;
    let budgets = sim.engine.budgets().await.unwrap();
    let names: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["shop/db", "shop/web"]);
    let web = &budgets[1];
    assert_eq!(web.allowed, 1);
    assert_eq!(web.pods_on.get("worker-1"), Some(&2));
    assert_eq!(web.pods_on.get("worker-2"), Some(&2));
    assert_eq!(web.pods_on.values().sum::<u32>(), 4);
    assert_eq!(budgets[0].pods_on.values().sum::<u32>(), 3);

    // Cordon and uncordon are idempotent and say what they changed.
    assert!(
        !sim.engine
            .cordon("worker-3")
            .await
            .unwrap()
            .was_unschedulable
    );
    assert!(
        sim.engine
            .cordon("worker-3")
            .await
            .unwrap()
            .was_unschedulable
    );
    assert!(sim.engine.uncordon("worker-3").await.unwrap());
    assert!(!sim.engine.uncordon("worker-3").await.unwrap());
    sim.sim.shutdown().await;
}
