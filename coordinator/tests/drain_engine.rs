//! The drain engine against the simulated cluster (kubesim, in-process): the
//! real Eviction API rules, controllers that replace evicted pods, and a count
//! of PDB violations that must stay at zero.

use std::time::Duration;

use k3sfleet_coordinator::drain::{
    Claimant, CordonState, Cordoned, DrainEngine, DrainError, DrainOptions, Owner, RetryPolicy,
    TimeoutPolicy, Uncordoned, cordon_and_drain,
};
use k3sfleet_kubesim::{Faults, KubeSim, Running, Scenario};
use k3sfleet_proto::v1::{DrainEvent, DrainOutcome, DrainResult, PodBlocked, drain_event};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
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

/// The owner of the cordons these tests make through the engine.
fn tester() -> Owner {
    Owner::Drain("admin:tester".into())
}

/// Nobody else's claim is live: every cordon claim found is left over.
fn nothing_live(_: &Owner) -> bool {
    false
}

impl Sim {
    /// A client as an operator with kubectl has it (not k3sfleet's).
    async fn operator(&self) -> Api<Node> {
        let kubeconfig = self._dir.path().join("kubeconfig");
        Api::all(
            k3sfleet_coordinator::kube::client(&kubeconfig, None)
                .await
                .unwrap(),
        )
    }

    /// `kubectl cordon` (true) or `kubectl uncordon` (false).
    async fn operator_sets_unschedulable(&self, node: &str, unschedulable: bool) {
        let value = if unschedulable {
            serde_json::json!(true)
        } else {
            serde_json::Value::Null
        };
        let manager = if unschedulable {
            "kubectl-cordon"
        } else {
            "kubectl-uncordon"
        };
        self.operator()
            .await
            .patch(
                node,
                &PatchParams {
                    field_manager: Some(manager.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(serde_json::json!({"spec": {"unschedulable": value}})),
            )
            .await
            .unwrap();
    }

    async fn cordon_state(&self, node: &str) -> CordonState {
        CordonState::of(&self.operator().await.get(node).await.unwrap())
    }
}

/// cordon_and_drain as an operator's drain by `actor`, collecting events.
async fn operator_drain(
    engine: &DrainEngine,
    node: &str,
    actor: &str,
    is_live: &(dyn Fn(&Owner) -> bool + Sync),
    options: &DrainOptions,
    policy: TimeoutPolicy,
) -> (Result<DrainResult, DrainError>, Vec<DrainEvent>) {
    let (events, mut received) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(event) = received.recv().await {
            all.push(event);
        }
        all
    });
    let claimant = Claimant {
        owner: Owner::Drain(actor.into()),
        is_live,
    };
    let result = cordon_and_drain(
        engine,
        node,
        &claimant,
        options,
        policy,
        events,
        CancellationToken::new(),
    )
    .await;
    (result, collector.await.unwrap())
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

    let cordon = sim.engine.cordon("worker-1", &tester()).await.unwrap();
    assert_eq!(cordon, Cordoned::Now);
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

    sim.engine.cordon("worker-1", &tester()).await.unwrap();
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

/// The API server carries out the eviction but its answer is lost, and the
/// watch runs late: by the time the engine asks again, the StatefulSet has
/// made a new pod under the name. The engine looks the pod up before asking
/// again and finds the old UID gone; asking blind would have been refused
/// (409) only after the budget's disruption was spent on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_eviction_answer_is_not_resent_for_a_pod_already_replaced() {
    let sim = Sim::toml(
        r#"
        [timings]
        replacement_delay = 0
        ready_delay = 1
        termination = 0
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
        max_unavailable = 2
        "#,
    )
    .await;
    let engine = sim.engine.clone().with_retry_policy(RetryPolicy {
        first: Duration::from_millis(300),
        max: Duration::from_secs(1),
    });
    let old_uid = sim.pods_on("worker-1")[0].metadata.uid.clone().unwrap();
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
    sim.sim.inject_faults(&Faults {
        lose_eviction_answers: 1,
        watch_delay_ms: 3_000,
        ..Default::default()
    });
    let (result, events) = drain(&engine, "worker-1", options()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert_eq!(gone_uids(&events), std::slice::from_ref(&old_uid));
    let stats = sim.sim.stats();
    assert_eq!(stats.evictions_accepted, 1);
    assert_eq!(
        stats.evictions_stale_uid, 0,
        "an eviction was sent again for the replaced pod"
    );
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
    engine.cordon("worker-1", &tester()).await.unwrap();
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
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
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
                let claimant = Claimant {
                    owner: tester(),
                    is_live: &nothing_live,
                };
                cordon_and_drain(
                    &engine, "worker-1", &claimant, &short, policy, events, cancel,
                )
                .await
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
    sim.operator_sets_unschedulable("worker-1", true).await;
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
    sim.operator_sets_unschedulable("worker-1", false).await;
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
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
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
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
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
                errors_for_seconds: 1.5,
                ..Default::default()
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
    assert_eq!(
        sim.engine.cordon("worker-3", &tester()).await.unwrap(),
        Cordoned::Now
    );
    assert_eq!(
        sim.engine.cordon("worker-3", &tester()).await.unwrap(),
        Cordoned::Already
    );
    assert_eq!(
        sim.engine.uncordon("worker-3", &tester()).await.unwrap(),
        Uncordoned::Now
    );
    assert_eq!(
        sim.engine.uncordon("worker-3", &tester()).await.unwrap(),
        Uncordoned::Already
    );
    sim.sim.shutdown().await;
}

/// A drain that did not finish left its cordon; the next `k3sfleet drain`
/// (by someone else) knows that cordon is k3sfleet's, takes it over, and its
/// uncordon policy lifts it. (Before the claim lived on the Node, the second
/// drain took it for an operator's and left the node cordoned for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_drain_takes_over_the_cordon_an_earlier_one_left() {
    let sim = Sim::toml(NEVER_RECOVERS).await;
    let short = DrainOptions {
        timeout: Duration::from_secs(2),
        ..options()
    };
    let (first, _) = operator_drain(
        &sim.engine,
        "worker-1",
        "admin:alice",
        &nothing_live,
        &short,
        TimeoutPolicy::LeaveCordoned,
    )
    .await;
    let first = first.unwrap();
    assert_eq!(outcome(&first), DrainOutcome::TimedOut);
    assert!(first.left_cordoned);
    let CordonState::Claimed(claim) = sim.cordon_state("worker-1").await else {
        panic!("the first drain's cordon carries its claim");
    };
    assert_eq!(claim.owner, Owner::Drain("admin:alice".into()));

    let (second, events) = operator_drain(
        &sim.engine,
        "worker-1",
        "admin:bob",
        &nothing_live,
        &short,
        TimeoutPolicy::Uncordon,
    )
    .await;
    let second = second.unwrap();
    assert_eq!(outcome(&second), DrainOutcome::TimedOut);
    assert!(matches!(
        &events[0].event,
        Some(drain_event::Event::Cordoned(c)) if !c.was_unschedulable
    ));
    assert!(
        !second.left_cordoned && second.message.ends_with("; uncordoned"),
        "{second:?}"
    );
    assert_eq!(sim.cordon_state("worker-1").await, CordonState::Schedulable);
    sim.sim.shutdown().await;
}

/// A node a live rollout holds is not an operator drain's to take; once that
/// rollout is over, its left-over cordon can be taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_a_node_a_live_rollout_holds() {
    let sim = Sim::toml(NEVER_RECOVERS).await;
    sim.engine
        .cordon("worker-1", &Owner::Rollout(5))
        .await
        .unwrap();
    let rollout_5_live = |owner: &Owner| *owner == Owner::Rollout(5);
    let (refused, events) = operator_drain(
        &sim.engine,
        "worker-1",
        "admin:alice",
        &rollout_5_live,
        &options(),
        TimeoutPolicy::Uncordon,
    )
    .await;
    let err = refused.unwrap_err();
    assert!(matches!(err, DrainError::Claimed { .. }), "{err}");
    assert!(err.to_string().contains("rollout 5"), "{err}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, Some(drain_event::Event::Evicting(_)))),
        "nothing was evicted"
    );
    assert_eq!(
        sim.cordon_state("worker-1").await.claim().unwrap().owner,
        Owner::Rollout(5)
    );

    let short = DrainOptions {
        timeout: Duration::from_secs(1),
        ..options()
    };
    let (taken, _) = operator_drain(
        &sim.engine,
        "worker-1",
        "admin:alice",
        &nothing_live,
        &short,
        TimeoutPolicy::LeaveCordoned,
    )
    .await;
    assert_eq!(outcome(&taken.unwrap()), DrainOutcome::TimedOut);
    assert_eq!(
        sim.cordon_state("worker-1").await.claim().unwrap().owner,
        Owner::Drain("admin:alice".into())
    );
    sim.sim.shutdown().await;
}

/// A drain whose pods cannot be evicted (here one under two budgets, which
/// the Eviction API refuses) is refused before the node is cordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_work_is_refused_before_the_node_is_cordoned() {
    let sim = Sim::toml(
        r#"
        [[nodes]]
        name = "worker-1"
        [[deployments]]
        namespace = "shop"
        name = "web"
        replicas = 2
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
    let (result, events) = operator_drain(
        &sim.engine,
        "worker-1",
        "admin:alice",
        &nothing_live,
        &options(),
        TimeoutPolicy::LeaveCordoned,
    )
    .await;
    let result = result.unwrap();
    assert_eq!(outcome(&result), DrainOutcome::Failed);
    assert!(
        result
            .message
            .contains("PodDisruptionBudgets (shop/web, shop/web-too)")
            && result.message.ends_with("nothing was changed"),
        "{}",
        result.message
    );
    assert!(!result.left_cordoned);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, Some(drain_event::Event::Cordoned(_)))),
        "never cordoned"
    );
    assert_eq!(sim.cordon_state("worker-1").await, CordonState::Schedulable);
    assert_eq!(sim.sim.stats().evictions_accepted, 0);
    sim.sim.shutdown().await;
}

/// An operator who lifts k3sfleet's cordon and cordons the node again owns
/// the new cordon: k3sfleet's uncordon leaves it (the API server says who set
/// spec.unschedulable in the node's managedFields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordon_an_operator_put_back_is_not_lifted() {
    let sim = Sim::file("drain-blocked.toml").await;
    let owner = Owner::Rollout(9);
    sim.engine.cordon("worker-3", &owner).await.unwrap();
    sim.operator_sets_unschedulable("worker-3", false).await;
    sim.operator_sets_unschedulable("worker-3", true).await;
    assert_eq!(sim.cordon_state("worker-3").await, CordonState::Foreign);
    let answer = sim.engine.uncordon("worker-3", &owner).await.unwrap();
    assert_eq!(answer, Uncordoned::NotOurs(CordonState::Foreign));
    assert!(sim.unschedulable("worker-3"));
    sim.sim.shutdown().await;
}

/// A pod waiting on its budget does not hold an eviction slot: with one
/// slot, the node's other pods still go while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waiting_on_its_budget_does_not_starve_the_others() {
    let sim = Sim::toml(
        r#"
        [timings]
        replacement_delay = 1
        ready_delay = 1
        termination = 1
        [[nodes]]
        name = "worker-1"
        [[deployments]]
        namespace = "shop"
        name = "blocked"
        replicas = 1
        [[deployments]]
        namespace = "shop"
        name = "zfree"
        replicas = 2
        [[pdbs]]
        namespace = "shop"
        name = "blocked"
        selector = { app = "blocked" }
        min_available = 1
        "#,
    )
    .await;
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
    let one_slot = DrainOptions {
        concurrency: 1,
        timeout: Duration::from_secs(4),
        ..options()
    };
    let (result, events) = drain(&sim.engine, "worker-1", one_slot).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(
        result.message.contains("shop/blocked"),
        "{}",
        result.message
    );
    let left = sim.names_on("worker-1");
    assert!(
        left.iter().all(|n| n.starts_with("blocked-")),
        "the free pods went while the blocked one waited: {left:?}"
    );
    assert_eq!(gone_uids(&events).len(), 2);
    sim.assert_no_violations();
    sim.sim.shutdown().await;
}

/// With skip_wait_for_delete_timeout, a pod stuck terminating no longer
/// holds the drain (kubectl's flag of that name); without it, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_stuck_terminating_is_given_up_on_only_when_asked() {
    let scenario = r#"
        [timings]
        termination = 600
        [[nodes]]
        name = "worker-1"
        [[nodes]]
        name = "worker-2"
        [[deployments]]
        namespace = "shop"
        name = "slow"
        replicas = 1
        grace_period = 600
        node_selector = { "kubernetes.io/hostname" = "worker-1" }
        "#;
    let waiting = DrainOptions {
        timeout: Duration::from_secs(3),
        ..options()
    };
    let sim = Sim::toml(scenario).await;
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
    let (result, _) = drain(&sim.engine, "worker-1", waiting.clone()).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::TimedOut,
        "{}",
        result.message
    );
    assert!(result.message.contains("terminating"), "{}", result.message);
    sim.sim.shutdown().await;

    let sim = Sim::toml(scenario).await;
    sim.engine.cordon("worker-1", &tester()).await.unwrap();
    let skipping = DrainOptions {
        skip_wait_for_delete_timeout: Some(Duration::from_secs(1)),
        ..waiting
    };
    let (result, _) = drain(&sim.engine, "worker-1", skipping).await;
    assert_eq!(
        outcome(&result),
        DrainOutcome::Drained,
        "{}",
        result.message
    );
    assert!(
        !sim.names_on("worker-1").is_empty(),
        "the pod is still terminating; the drain just stopped waiting for it"
    );
    sim.sim.shutdown().await;
}
