//! One drain: watch the node's pods and the budgets, plan, then evict every
//! planned pod (bounded concurrency) and wait until each one's UID is gone,
//! until done, out of time, cancelled, or stopped by a refusal that retrying
//! cannot fix.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k3sfleet_proto::v1::{
    DrainEvent, DrainOutcome, DrainResult, PodBlocked, PodEvicting, PodGone, drain_event,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::eviction::{self, EvictionVersion, PodId};
use super::pdb::{PdbView, covering, pod_ref};
use super::plan::{Plan, count, missing_daemonsets};
use super::report::{PodState, go_duration, unfinished};
use super::retry::{Answer, Fatal, RetryPolicy, classify};
use super::wait::{API_ERRORS, TERMINATION, WaitClock, budget_reason, uid_gone};
use super::watch::Live;
use super::{DrainEngine, DrainError, DrainOptions};

/// Without news from the watch for this long, a pod's presence is checked
/// directly (a watch can stall without failing).
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Stands in for "no deadline" (a timeout too large to add to now).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub async fn run(
    engine: &DrainEngine,
    node: &str,
    options: &DrainOptions,
    events: mpsc::Sender<DrainEvent>,
    cancel: CancellationToken,
) -> Result<DrainResult, DrainError> {
    let started = Instant::now();
    let deadline = started
        .checked_add(options.timeout)
        .unwrap_or_else(|| started + FOREVER);
    let result = |outcome: DrainOutcome, message: String| DrainResult {
        outcome: outcome as i32,
        message,
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    };
    super::node::get(&engine.client, node).await?;
    let version = engine.eviction_version().await?;

    let pods = Live::<Pod>::start(
        Api::all(engine.client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let pdbs = Live::<PodDisruptionBudget>::start(
        Api::all(engine.client.clone()),
        watcher::Config::default(),
    );
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(result(DrainOutcome::Failed, "cancelled".into())),
        _ = sleep_until(deadline) => {
            let why = pods.last_error().or(pdbs.last_error()).unwrap_or_else(|| "no answer".into());
            return Ok(result(
                DrainOutcome::TimedOut,
                format!("could not list the pods on {node} and the PodDisruptionBudgets within {}: {why}",
                    go_duration(options.timeout)),
            ));
        }
        _ = async { pods.ready().await; pdbs.ready().await } => {}
    }

    let on_node: Vec<Pod> = pods.snapshot().iter().map(|p| (**p).clone()).collect();
    let budgets: Vec<PodDisruptionBudget> = pdbs.snapshot().iter().map(|p| (**p).clone()).collect();
    let missing = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(result(DrainOutcome::Failed, "cancelled".into())),
        missing = missing_daemonsets(&engine.client, &on_node, Some(deadline)) => match missing {
            Ok(missing) => missing,
            Err(err) => return Ok(result(DrainOutcome::Failed, super::error::one_line(&err))),
        },
    };
    let plan = Plan::build(on_node, &budgets, &missing, options);
    send(&events, drain_event::Event::Plan(plan.to_proto())).await;
    if let Some(refusal) = plan.refusal(node) {
        return Ok(result(DrainOutcome::Failed, refusal));
    }

    let drain = Drain {
        client: &engine.client,
        version,
        retry: engine.retry,
        grace_period_seconds: options.grace_period_seconds,
        skip_wait_for_delete_timeout: options.skip_wait_for_delete_timeout,
        pods: &pods,
        pdbs: &pdbs,
        events: &events,
        slots: Semaphore::new(options.concurrency.max(1)),
        states: Mutex::new(
            plan.evict
                .iter()
                .map(|pod| (super::selection::pod_key(pod), PodState::Queued))
                .collect(),
        ),
        clock: Mutex::new(WaitClock::default()),
        started,
        workloads_left: tokio::sync::watch::channel(
            plan.evict
                .iter()
                .filter(|p| !is_instance_manager(p))
                .count(),
        )
        .0,
        longhorn: tokio::sync::Mutex::new(None),
    };
    let mut work: FuturesUnordered<_> = plan.evict.iter().map(|pod| drain.remove(pod)).collect();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(drain.result(DrainOutcome::Failed, "cancelled".into())),
            _ = sleep_until(deadline) => {
                let mut why = drain.unfinished();
                if why.is_empty() {
                    why = format!("timed out after {}", go_duration(options.timeout));
                }
                return Ok(drain.result(DrainOutcome::TimedOut, why));
            }
            next = work.next() => match next {
                None => break,
                Some(Ok(())) => {}
                Some(Err(why)) => return Ok(drain.result(DrainOutcome::Failed, why)),
            },
        }
    }
    let evicted = plan.evict.len();
    let message = if evicted == 0 {
        format!("drained {node}: nothing to evict")
    } else {
        format!(
            "drained {node}: {} evicted in {}",
            count(evicted, "pod"),
            go_duration(started.elapsed())
        )
    };
    Ok(drain.result(DrainOutcome::Drained, message))
}

async fn send(events: &mpsc::Sender<DrainEvent>, event: drain_event::Event) {
    // Nobody listening is no reason to stop draining.
    let _ = events.send(DrainEvent { event: Some(event) }).await;
}

/// The state shared by the pods of one drain.
struct Drain<'a> {
    client: &'a kube::Client,
    version: EvictionVersion,
    retry: RetryPolicy,
    grace_period_seconds: Option<i64>,
    skip_wait_for_delete_timeout: Option<Duration>,
    pods: &'a Live<Pod>,
    pdbs: &'a Live<PodDisruptionBudget>,
    events: &'a mpsc::Sender<DrainEvent>,
    slots: Semaphore,
    states: Mutex<BTreeMap<String, PodState>>,
    clock: Mutex<WaitClock>,
    started: Instant,
    /// Workload pods not yet gone; Longhorn's instance managers are evicted
    /// only after them, since Longhorn releases their budgets once the
    /// workloads' volumes have detached.
    workloads_left: tokio::sync::watch::Sender<usize>,
    /// Longhorn's state, re-read at most every few seconds, to say what it waits for.
    longhorn: tokio::sync::Mutex<Option<(Instant, Option<crate::longhorn::LonghornView>)>>,
}

/// How often a drain waiting on Longhorn reads its state again.
const LONGHORN_REFRESH: Duration = Duration::from_secs(5);

/// A Longhorn instance-manager pod: evicted last.
fn is_instance_manager(pod: &Pod) -> bool {
    pod.metadata.namespace.as_deref() == Some(crate::longhorn::NAMESPACE)
        && pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(crate::longhorn::COMPONENT_LABEL))
            .is_some_and(|c| c == crate::longhorn::INSTANCE_MANAGER)
}

/// How an eviction loop ended.
enum Evicted {
    Accepted,
    Gone,
}

impl Drain<'_> {
    /// Evicts one pod and waits until it is gone. `Err` carries why the whole
    /// drain must stop.
    async fn remove(&self, pod: &Pod) -> Result<(), String> {
        let id = PodId {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let key = id.key();
        let instance_manager = is_instance_manager(pod);
        if instance_manager {
            let mut left = self.workloads_left.subscribe();
            let _ = left.wait_for(|n| *n == 0).await;
        }
        let done = self.remove_now(pod, &id, &key).await;
        if !instance_manager {
            self.workloads_left
                .send_modify(|n| *n = n.saturating_sub(1));
        }
        done
    }

    async fn remove_now(&self, pod: &Pod, id: &PodId, key: &str) -> Result<(), String> {
        let id = id.clone();
        let key = key.to_string();
        self.set_state(&key, PodState::Evicting);
        send(
            self.events,
            drain_event::Event::Evicting(PodEvicting {
                pod: Some(pod_ref(pod)),
            }),
        )
        .await;
        tracing::info!(pod = key, "evicting");
        let evicted = self.evict(pod, &id).await?;
        if matches!(evicted, Evicted::Accepted) {
            let since = Instant::now();
            self.set_state(&key, PodState::Terminating { since });
            self.clock().begin(TERMINATION, since);
            self.wait_gone(&id, since).await;
            self.clock().end(TERMINATION, Instant::now());
        }
        self.set_state(&key, PodState::Gone);
        send(
            self.events,
            drain_event::Event::Gone(PodGone {
                pod: Some(pod_ref(pod)),
            }),
        )
        .await;
        tracing::info!(pod = key, "gone");
        Ok(())
    }

    /// Asks until the API server accepts, the pod is gone, or retrying is futile.
    async fn evict(&self, pod: &Pod, id: &PodId) -> Result<Evicted, String> {
        let key = id.key();
        let mut attempts = 0u32;
        // The reason this pod is waiting for, and since when.
        let mut waiting: Option<(String, Instant)> = None;
        // After an answer that may have been lost, the pod is looked up
        // directly: the eviction may have been admitted and the pod's
        // controller may have made a new one of that name, which the watch
        // may not show yet. Asking again with the old UID would be refused
        // (409) only after the API server had spent the budget's disruption
        // on it, for up to two minutes.
        let mut answer_lost = false;
        let outcome = loop {
            if self.is_gone(id) || (answer_lost && self.gone_by_lookup(id).await) {
                break Ok(Evicted::Gone);
            }
            attempts += 1;
            let answer = {
                // A slot is held only while the request is in flight: a pod
                // waiting on its budget must not starve the node's others.
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                classify(
                    &eviction::evict(self.client, id, self.version, self.grace_period_seconds)
                        .await,
                )
            };
            answer_lost = matches!(answer, Answer::Transient(_));
            let (pdb, healthy, message) = match answer {
                Answer::Accepted => break Ok(Evicted::Accepted),
                Answer::Gone => break Ok(Evicted::Gone),
                Answer::Fatal(fatal) => break Err(self.explain(&fatal, pod, &key)),
                Answer::Refused {
                    pdb,
                    healthy,
                    message,
                    ..
                } => (
                    self.budget_of(pod, &id.namespace, pdb.as_deref()),
                    healthy,
                    message,
                ),
                Answer::Transient(message) => (None, None, message),
            };
            let reason = pdb
                .as_deref()
                .map(budget_reason)
                .unwrap_or_else(|| API_ERRORS.into());
            let since = self.wait_for(&mut waiting, reason);
            let view = pdb.as_deref().and_then(|pdb| self.budget(pdb));
            // The server's counts at the refusal; the watched status may lag.
            let (current_healthy, desired_healthy) = healthy
                .or_else(|| {
                    view.as_ref()
                        .map(|v| (v.current_healthy, v.desired_healthy))
                })
                .unwrap_or_default();
            // Longhorn's budgets say nothing of why: Longhorn's state does.
            let message = match &view {
                Some(budget) if budget.longhorn_instance_manager => {
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    format!("{message} {}", self.longhorn_waits_for(&node).await)
                }
                Some(budget) => {
                    match budget
                        .earlier_evictions()
                        .or_else(|| budget.status_behind())
                    {
                        Some(why) => format!("{message}; {why}"),
                        None => message,
                    }
                }
                None => message,
            };
            self.set_state(
                &key,
                PodState::Blocked {
                    pdb: pdb.clone(),
                    message: message.clone(),
                    since,
                    attempts,
                },
            );
            tracing::info!(
                pod = key,
                pdb,
                attempts,
                message,
                "eviction refused; will retry"
            );
            send(
                self.events,
                drain_event::Event::Blocked(PodBlocked {
                    pod: Some(pod_ref(pod)),
                    pdb: pdb.clone().unwrap_or_default(),
                    current_healthy,
                    desired_healthy,
                    message,
                    waiting_ms: since.elapsed().as_millis() as u64,
                    attempts,
                }),
            )
            .await;
            let delay = self.retry.delay(attempts);
            match pdb {
                Some(pdb) => {
                    let seen = view.and_then(|v| v.resource_version);
                    self.wait_for_budget(&pdb, seen, delay).await;
                }
                None => sleep(delay).await,
            }
        };
        if let Some((reason, _)) = waiting {
            self.clock().end(&reason, Instant::now());
        }
        outcome
    }

    /// What Longhorn waits for before it lets `node`'s instance manager go.
    async fn longhorn_waits_for(&self, node: &str) -> String {
        let mut cached = self.longhorn.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < LONGHORN_REFRESH);
        if !fresh {
            match crate::longhorn::read(self.client).await {
                Ok(view) => *cached = Some((Instant::now(), view)),
                Err(err) => {
                    return format!(
                        "(cannot read Longhorn's state: {})",
                        super::error::one_line(&err)
                    );
                }
            }
        }
        match cached.as_ref().and_then(|(_, view)| view.as_ref()) {
            Some(view) => crate::longhorn::rules::why_instance_manager_stays(view, node),
            None => String::new(),
        }
    }

    /// Switches this pod's wait to `reason`; returns since when it has been
    /// waiting (for anything).
    fn wait_for(&self, waiting: &mut Option<(String, Instant)>, reason: String) -> Instant {
        let now = Instant::now();
        match waiting {
            Some((current, since)) => {
                if *current != reason {
                    let mut clock = self.clock();
                    clock.end(current, now);
                    clock.begin(&reason, now);
                    *current = reason;
                }
                *since
            }
            None => {
                self.clock().begin(&reason, now);
                *waiting = Some((reason, now));
                now
            }
        }
    }

    /// Returns as soon as `pdb` (changed since `seen`) allows a disruption or
    /// is deleted, or after `delay`.
    async fn wait_for_budget(&self, pdb: &str, seen: Option<String>, delay: Duration) {
        let until = Instant::now() + delay;
        let mut changes = self.pdbs.changes();
        loop {
            match self.budget(pdb) {
                None => return,
                Some(view) if view.resource_version != seen && view.allows_disruption() => return,
                Some(_) => {}
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    sleep_until(until).await;
                    return;
                },
                _ = sleep_until(until) => return,
            }
        }
    }

    /// Waits until no pod with this UID exists: by the watch, checked directly
    /// now and then; or, with `skip_wait_for_delete_timeout`, until the pod
    /// has been terminating that long (kubectl measures from the pod's
    /// deletionTimestamp; its clock is the API server's, ours is when the
    /// eviction was accepted, which is no earlier).
    async fn wait_gone(&self, id: &PodId, evicted_at: Instant) {
        let give_up = self
            .skip_wait_for_delete_timeout
            .map(|timeout| evicted_at + timeout);
        let mut changes = self.pods.changes();
        loop {
            if self.is_gone(id) {
                return;
            }
            if give_up.is_some_and(|at| Instant::now() >= at) {
                tracing::warn!(
                    pod = id.key(),
                    "still terminating after skip-wait-for-delete-timeout; not waiting for it"
                );
                return;
            }
            let recheck = give_up.map_or(RECHECK_INTERVAL, |at| {
                RECHECK_INTERVAL.min(at.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    sleep(recheck).await;
                },
                _ = sleep(recheck) => {
                    if self.gone_by_lookup(id).await {
                        return;
                    }
                }
            }
        }
    }

    fn is_gone(&self, id: &PodId) -> bool {
        uid_gone(self.pods.get(&id.namespace, &id.name).as_deref(), &id.uid)
    }

    async fn gone_by_lookup(&self, id: &PodId) -> bool {
        match Api::<Pod>::namespaced(self.client.clone(), &id.namespace)
            .get_opt(&id.name)
            .await
        {
            Ok(found) => uid_gone(found.as_ref(), &id.uid),
            Err(_) => false,
        }
    }

    /// The budget that refused `pod`: the one the API named, else the only
    /// one covering it.
    fn budget_of(&self, pod: &Pod, namespace: &str, named: Option<&str>) -> Option<String> {
        if let Some(name) = named {
            return Some(format!("{namespace}/{name}"));
        }
        let views: Vec<PdbView> = self
            .pdbs
            .snapshot()
            .iter()
            .map(|p| PdbView::new(p))
            .collect();
        match covering(&views, pod).as_slice() {
            [only] => Some(only.key.clone()),
            _ => None,
        }
    }

    /// The live view of a budget, by "namespace/name".
    fn budget(&self, key: &str) -> Option<PdbView> {
        let (namespace, name) = key.split_once('/')?;
        self.pdbs.get(namespace, name).map(|pdb| PdbView::new(&pdb))
    }

    fn explain(&self, fatal: &Fatal, pod: &Pod, key: &str) -> String {
        match fatal {
            Fatal::MultipleBudgets => {
                let views: Vec<PdbView> = self
                    .pdbs
                    .snapshot()
                    .iter()
                    .map(|p| PdbView::new(p))
                    .collect();
                let mut names: Vec<&str> = covering(&views, pod)
                    .iter()
                    .map(|v| v.key.as_str())
                    .collect();
                names.sort();
                format!(
                    "pod {key} is covered by more than one PodDisruptionBudget ({}), which the \
                     Eviction API refuses: leave one budget per pod",
                    names.join(", ")
                )
            }
            Fatal::Forbidden(message) => {
                format!("the API server forbids evicting {key}: {message}")
            }
            Fatal::Rejected { code, message } => {
                format!("the API server rejected the eviction of {key} ({code}): {message}")
            }
        }
    }

    fn set_state(&self, key: &str, state: PodState) {
        self.states
            .lock()
            .expect("drain state")
            .insert(key.to_string(), state);
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, WaitClock> {
        self.clock.lock().expect("wait clock")
    }

    fn unfinished(&self) -> String {
        let states = self.states.lock().expect("drain state");
        let healthy = |pdb: &str| {
            self.budget(pdb)
                .map(|v| (v.current_healthy, v.desired_healthy))
        };
        unfinished(&states, &healthy, Instant::now())
    }

    fn result(&self, outcome: DrainOutcome, message: String) -> DrainResult {
        let evicted = self
            .states
            .lock()
            .expect("drain state")
            .values()
            .filter(|state| matches!(state, PodState::Terminating { .. } | PodState::Gone))
            .count();
        DrainResult {
            outcome: outcome as i32,
            message,
            left_cordoned: false,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            evicted: evicted as u32,
            waits: self.clock().totals(Instant::now()),
        }
    }
}
