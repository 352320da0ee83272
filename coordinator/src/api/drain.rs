//! DrainService: operators cordon, drain and uncordon nodes; every drain and
//! uncordon is in the audit log, with who asked and how it ended.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k3sfleet_proto::v1::drain_service_server::DrainService;
use k3sfleet_proto::v1::{
    CheckWorkloadsRequest, DrainEvent, DrainOutcome, DrainPlan, DrainRequest, DrainResult,
    TimeoutPolicy as PbPolicy, UncordonRequest, UncordonResponse, WorkloadReport, drain_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::clock::unix_ms;
use crate::drain::{
    Claimant, Claims, CordonState, DEFAULT_CONCURRENCY, DrainEngine, DrainError, DrainOptions,
    Owner, TimeoutPolicy, cordon_and_drain, go_duration,
};
use crate::store::{AuditEvent, Store};

pub type DrainEventStream = Pin<Box<dyn Stream<Item = Result<DrainEvent, Status>> + Send>>;

/// Events buffered for a slow caller before the drain waits for it.
const EVENT_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub struct DrainApi {
    /// None: the config has no `[kubernetes]` section.
    engine: Option<DrainEngine>,
    default_timeout: Duration,
    store: Store,
    /// Which nodes are drained now, and the rollout under way: one claim per node.
    claims: Arc<Claims>,
}

impl DrainApi {
    pub fn new(
        engine: Option<DrainEngine>,
        default_timeout: Duration,
        store: Store,
        claims: Arc<Claims>,
    ) -> Self {
        DrainApi {
            engine,
            default_timeout,
            store,
            claims,
        }
    }

    fn engine(&self) -> Result<&DrainEngine, Status> {
        self.engine.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator has no Kubernetes access: set kubernetes.kubeconfig \
                 (the kubeconfig key of a [kubernetes] section) in its config file",
            )
        })
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        node: &str,
        detail: String,
    ) -> Result<(), Status> {
        audit(&self.store, actor, action, node, detail)
            .await
            .map_err(|err| Status::internal(format!("writing the audit log failed: {err}")))
    }
}

async fn audit(
    store: &Store,
    actor: &str,
    action: &str,
    node: &str,
    detail: String,
) -> Result<(), crate::store::StoreError> {
    let event = AuditEvent {
        actor: actor.to_string(),
        action: action.to_string(),
        node: Some(node.to_string()),
        detail,
    };
    store.audit(event, unix_ms()).await.map(|_| ())
}

#[tonic::async_trait]
impl DrainService for DrainApi {
    type DrainStream = DrainEventStream;

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<Self::DrainStream>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let request = request.into_inner();
        let node = valid_node(&request.node)?;
        let options = options_from(&request, self.default_timeout)?;
        let policy = policy_from(request.on_timeout)?;
        let engine = self.engine()?.clone();
        let (sender, receiver) = mpsc::channel(EVENT_BUFFER);

        if request.dry_run {
            let plan = engine.plan(&node, &options).await.map_err(to_status)?;
            let summary = dry_run_summary(&plan);
            self.audit(&actor, "drain.dry_run", &node, summary.clone())
                .await?;
            for event in [
                drain_event::Event::Plan(plan),
                drain_event::Event::Result(DrainResult {
                    outcome: DrainOutcome::DryRun as i32,
                    message: summary,
                    ..Default::default()
                }),
            ] {
                let _ = sender.try_send(Ok(DrainEvent { event: Some(event) }));
            }
            return Ok(Response::new(Box::pin(ReceiverStream::new(receiver))));
        }

        let claim = self.claims.start_drain(&node, &actor).map_err(|by| {
            Status::already_exists(format!("{node} is already being drained (by {by})"))
        })?;
        // Persist before acting: the entry exists before the node is touched.
        self.audit(
            &actor,
            "drain.started",
            &node,
            describe_options(&options, policy),
        )
        .await?;
        let store = self.store.clone();
        let claims = self.claims.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let is_live = |owner: &Owner| match owner {
                // This drain holds the node's drain claim; any other drain's
                // cordon on it is left over.
                Owner::Drain(_) => false,
                Owner::Rollout(_) => claims.is_live_on(&node, owner),
            };
            let claimant = Claimant {
                owner: Owner::Drain(actor.clone()),
                is_live: &is_live,
            };
            let outcome = run_drain(&engine, &node, &claimant, &options, policy, &sender).await;
            let (detail, last) = match outcome {
                Ok(result) => (
                    format!("{}: {}", outcome_name(result.outcome), result.message),
                    Ok(DrainEvent {
                        event: Some(drain_event::Event::Result(result)),
                    }),
                ),
                Err(err) => (
                    format!("not started: {}", crate::drain::describe_error(&err)),
                    Err(to_status(err)),
                ),
            };
            if let Err(err) = audit(&store, &actor, "drain.finished", &node, detail).await {
                tracing::error!(error = %err, node, "writing the audit log failed");
            }
            let _ = sender.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn check_workloads(
        &self,
        request: Request<CheckWorkloadsRequest>,
    ) -> Result<Response<WorkloadReport>, Status> {
        let namespace = request.into_inner().namespace;
        let findings = self
            .engine()?
            .check_workloads(Some(namespace.as_str()).filter(|ns| !ns.is_empty()))
            .await
            .map_err(to_status)?;
        Ok(Response::new(WorkloadReport { findings }))
    }

    async fn uncordon(
        &self,
        request: Request<UncordonRequest>,
    ) -> Result<Response<UncordonResponse>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let node = valid_node(&request.into_inner().node)?;
        let engine = self.engine()?;
        let nodes = engine.nodes().await.map_err(to_status)?;
        let state = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
            .map(CordonState::of);
        if let Some(CordonState::Claimed(claim)) = &state
            && self.claims.is_live_on(&node, &claim.owner)
        {
            return Err(Status::failed_precondition(match &claim.owner {
                Owner::Rollout(id) => format!(
                    "{node} is cordoned by rollout {id}, which is under way: skip the node \
                     (k3sfleet upgrade skip {node}) or abort the rollout"
                ),
                Owner::Drain(actor) => {
                    format!("{node} is being drained by {actor}; wait for that drain to end")
                }
            }));
        }
        let was = engine.uncordon_any(&node).await.map_err(to_status)?;
        let (changed, detail) = match was {
            CordonState::Schedulable => (false, "was already schedulable".to_string()),
            CordonState::Claimed(claim) => (
                true,
                format!("made schedulable (it was cordoned by k3sfleet for {claim})"),
            ),
            CordonState::Foreign => (true, "made schedulable".to_string()),
        };
        self.audit(&actor, "node.uncordoned", &node, detail).await?;
        Ok(Response::new(UncordonResponse { changed }))
    }
}

/// Cordons and drains, forwarding events to the caller; a caller that goes
/// away cancels the drain (and the timeout policy then applies).
async fn run_drain(
    engine: &DrainEngine,
    node: &str,
    claimant: &Claimant<'_>,
    options: &DrainOptions,
    policy: TimeoutPolicy,
    caller: &mpsc::Sender<Result<DrainEvent, Status>>,
) -> Result<DrainResult, DrainError> {
    let cancel = CancellationToken::new();
    let (events, mut received) = mpsc::channel(EVENT_BUFFER);
    let forward = async {
        while let Some(event) = received.recv().await {
            if caller.send(Ok(event)).await.is_err() {
                cancel.cancel();
            }
        }
    };
    let drain = async {
        let drain = cordon_and_drain(
            engine,
            node,
            claimant,
            options,
            policy,
            events,
            cancel.clone(),
        );
        tokio::pin!(drain);
        tokio::select! {
            result = &mut drain => result,
            _ = caller.closed() => {
                tracing::warn!(node, "the caller went away; cancelling the drain");
                cancel.cancel();
                drain.await
            }
        }
    };
    let (result, ()) = tokio::join!(drain, forward);
    result
}

fn valid_node(node: &str) -> Result<String, Status> {
    let valid = !node.is_empty()
        && node.len() <= 253
        && node
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(node.to_string())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid node name {node:?}: expected a Kubernetes node name (lowercase letters, digits, '-', '.')"
        )))
    }
}

fn options_from(request: &DrainRequest, default_timeout: Duration) -> Result<DrainOptions, Status> {
    let grace_period_seconds = match request.grace_period_seconds {
        None | Some(-1) => None,
        Some(seconds) if seconds >= 0 => Some(i64::from(seconds)),
        Some(seconds) => {
            return Err(Status::invalid_argument(format!(
                "invalid grace_period_seconds {seconds}: give 0 or more, or -1 for each pod's own"
            )));
        }
    };
    Ok(DrainOptions {
        timeout: match request.timeout_seconds {
            0 => default_timeout,
            seconds => Duration::from_secs(u64::from(seconds)),
        },
        delete_emptydir_data: request.delete_emptydir_data,
        force: request.force,
        grace_period_seconds,
        concurrency: match request.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n => n as usize,
        },
        skip_wait_for_delete_timeout: match request.skip_wait_for_delete_timeout_seconds {
            0 => None,
            seconds => Some(Duration::from_secs(u64::from(seconds))),
        },
    })
}

fn policy_from(value: i32) -> Result<TimeoutPolicy, Status> {
    match PbPolicy::try_from(value) {
        Ok(PbPolicy::Unspecified | PbPolicy::LeaveCordoned) => Ok(TimeoutPolicy::LeaveCordoned),
        Ok(PbPolicy::Uncordon) => Ok(TimeoutPolicy::Uncordon),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid on_timeout {value}: expected TIMEOUT_POLICY_LEAVE_CORDONED or TIMEOUT_POLICY_UNCORDON"
        ))),
    }
}

fn describe_options(options: &DrainOptions, policy: TimeoutPolicy) -> String {
    let mut parts = vec![
        format!("timeout {}", go_duration(options.timeout)),
        match policy {
            TimeoutPolicy::LeaveCordoned => "on-timeout leave-cordoned".to_string(),
            TimeoutPolicy::Uncordon => "on-timeout uncordon".to_string(),
        },
        format!("concurrency {}", options.concurrency),
    ];
    if options.delete_emptydir_data {
        parts.push("delete-emptydir-data".into());
    }
    if options.force {
        parts.push("force".into());
    }
    if let Some(seconds) = options.grace_period_seconds {
        parts.push(format!("grace-period {seconds}s"));
    }
    if let Some(timeout) = options.skip_wait_for_delete_timeout {
        parts.push(format!(
            "skip-wait-for-delete-timeout {}",
            go_duration(timeout)
        ));
    }
    parts.join(", ")
}

pub fn dry_run_summary(plan: &DrainPlan) -> String {
    let blocking: Vec<&str> = plan.blocking.iter().map(|b| b.pdb.as_str()).collect();
    let mut text = format!(
        "would evict {}, skip {}, refuse {}",
        plan.evict.len(),
        plan.skipped.len(),
        plan.refused.len()
    );
    if !blocking.is_empty() {
        text.push_str(&format!("; blocked now by {}", blocking.join(", ")));
    }
    text
}

pub fn outcome_name(outcome: i32) -> &'static str {
    match DrainOutcome::try_from(outcome).unwrap_or(DrainOutcome::Unspecified) {
        DrainOutcome::Drained => "DRAINED",
        DrainOutcome::TimedOut => "TIMED_OUT",
        DrainOutcome::Failed => "FAILED",
        DrainOutcome::DryRun => "DRY_RUN",
        DrainOutcome::Unspecified => "UNKNOWN",
    }
}

/// The one conversion of drain errors to gRPC statuses.
fn to_status(err: DrainError) -> Status {
    let message = crate::drain::describe_error(&err);
    match &err {
        DrainError::NodeNotFound { .. } => Status::not_found(message),
        DrainError::NoEvictionApi => Status::failed_precondition(message),
        DrainError::Conflict { .. } => Status::aborted(message),
        DrainError::Claimed { .. } => Status::failed_precondition(message),
        DrainError::Kubernetes { .. } => match err.api_code() {
            Some(401 | 403) => Status::permission_denied(format!(
                "the coordinator's Kubernetes credentials are not allowed: {message}"
            )),
            _ if err.is_transient() => Status::unavailable(message),
            _ => Status::internal(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_options_with_defaults() {
        let default = Duration::from_secs(300);
        let options = options_from(&DrainRequest::default(), default).unwrap();
        assert_eq!(options, DrainOptions::default());
        let options = options_from(
            &DrainRequest {
                timeout_seconds: 30,
                grace_period_seconds: Some(0),
                concurrency: 2,
                force: true,
                ..Default::default()
            },
            default,
        )
        .unwrap();
        assert_eq!(options.timeout, Duration::from_secs(30));
        assert_eq!(options.grace_period_seconds, Some(0));
        assert_eq!(options.concurrency, 2);
        assert!(options.force);
        let own = options_from(
            &DrainRequest {
                grace_period_seconds: Some(-1),
                ..Default::default()
            },
            default,
        )
        .unwrap();
        assert_eq!(own.grace_period_seconds, None);
        let err = options_from(
            &DrainRequest {
                grace_period_seconds: Some(-5),
                ..Default::default()
            },
            default,
        )
        .unwrap_err();
        assert!(err.message().contains("grace_period_seconds -5"));
    }

    #[test]
    fn bad_names_and_policies_are_named() {
        assert!(valid_node("worker-01").is_ok());
        for bad in ["", "Worker", "a b", "x/y"] {
            let err = valid_node(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(policy_from(0).unwrap(), TimeoutPolicy::LeaveCordoned);
        assert_eq!(policy_from(2).unwrap(), TimeoutPolicy::Uncordon);
        assert!(
            policy_from(7)
                .unwrap_err()
                .message()
                .contains("on_timeout 7")
        );
    }
}
