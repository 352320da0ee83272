//! RolloutService: plan, start, watch and steer rolling upgrades.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k3sfleet_proto::v1::rollout_service_server::RolloutService;
use k3sfleet_proto::v1::{
    ControlRolloutRequest, GetRolloutRequest, PermanentBlockers, PlanBlocker, RolloutAction,
    RolloutStatus, UpgradeOptions, UpgradePlan,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::rollout::plan::{initial_nodes, validate};
use crate::rollout::state::Control;
use crate::rollout::{RolloutEngine, RolloutError};

/// Watchers get at most this many updates a second.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

pub type StatusStream = Pin<Box<dyn Stream<Item = Result<RolloutStatus, Status>> + Send>>;

#[derive(Debug)]
pub struct RolloutApi {
    engine: Arc<RolloutEngine>,
}

impl RolloutApi {
    pub fn new(engine: Arc<RolloutEngine>) -> Self {
        RolloutApi { engine }
    }
}

fn status(err: RolloutError) -> Status {
    match err {
        RolloutError::Refused(refused) => Status::failed_precondition(refused.0),
        RolloutError::Invalid(message) => Status::invalid_argument(message),
        RolloutError::NotFound => Status::not_found(err.to_string()),
        RolloutError::NoCluster => Status::failed_precondition(err.to_string()),
        RolloutError::Store(_) => Status::internal(err.to_string()),
        RolloutError::Stopped => Status::unavailable(err.to_string()),
    }
}

#[tonic::async_trait]
impl RolloutService for RolloutApi {
    type WatchRolloutStream = StatusStream;

    async fn plan_upgrade(
        &self,
        request: Request<UpgradeOptions>,
    ) -> Result<Response<UpgradePlan>, Status> {
        self.engine
            .plan(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn start_upgrade(
        &self,
        request: Request<UpgradeOptions>,
    ) -> Result<Response<RolloutStatus>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let options = request.into_inner();
        let plan = self.engine.plan(options.clone()).await.map_err(status)?;
        let mut reasons: Vec<String> = plan
            .refusals
            .iter()
            .map(|r| format!("{} (rule {})", r.message, r.rule))
            .collect();
        // Missing artifacts fail every node: refuse now rather than pause later.
        reasons.extend(
            plan.blockers
                .iter()
                .filter(|b| b.kind == "artifact")
                .map(|b| b.message.clone()),
        );
        let policy = PermanentBlockers::try_from(options.permanent_blockers).map_err(|_| {
            Status::invalid_argument(format!(
                "invalid permanent_blockers {}: expected refuse, skip or wait",
                options.permanent_blockers
            ))
        })?;
        let permanent: Vec<&PlanBlocker> = plan.blockers.iter().filter(|b| b.permanent).collect();
        if policy == PermanentBlockers::Refuse && !permanent.is_empty() {
            reasons.push(format!(
                "{} (choose --permanent-blockers skip to leave those nodes out, or wait to start anyway)",
                permanent
                    .iter()
                    .map(|b| format!("{}: {}", b.node, b.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if !reasons.is_empty() {
            return Err(Status::failed_precondition(format!(
                "the upgrade cannot start: {}",
                reasons.join("; ")
            )));
        }
        let left_out: Vec<String> = match policy {
            PermanentBlockers::Skip => permanent.iter().map(|b| b.node.clone()).collect(),
            _ => Vec::new(),
        };
        if plan.waves.is_empty() {
            return Err(Status::failed_precondition(format!(
                "every selected node runs {} already",
                plan.target_version
            )));
        }
        let valid = validate(options).map_err(status)?;
        let mut nodes = initial_nodes(
            &self.engine.candidates(&valid.options),
            &plan.target_version,
        );
        for node in nodes.iter_mut().filter(|n| left_out.contains(&n.node)) {
            node.step = crate::rollout::state::Step::Skipped;
            node.failure = "left out: its drain could not finish as things stand".into();
        }
        let rollout = self
            .engine
            .start(valid.options, nodes, &actor)
            .await
            .map_err(status)?;
        self.engine
            .status(rollout.id as u64)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<RolloutStatus>, Status> {
        self.engine
            .status(request.into_inner().id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn watch_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let mut id = request.into_inner().id;
        let first = self.engine.status(id).await.map_err(status)?;
        id = first.id;
        let (sender, receiver) = mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let mut changes = engine.subscribe();
            changes.mark_unchanged();
            let mut current = first;
            loop {
                let finished = matches!(current.phase.as_str(), "completed" | "aborted");
                if sender.send(Ok(current)).await.is_err() || finished {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    // Elapsed times move even when nothing else does.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
                current = match engine.status(id).await {
                    Ok(status) => status,
                    Err(err) => {
                        let _ = sender.send(Err(self::status(err))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn control_rollout(
        &self,
        request: Request<ControlRolloutRequest>,
    ) -> Result<Response<RolloutStatus>, Status> {
        let actor = auth::caller(&request)?.audit_name();
        let ControlRolloutRequest {
            action,
            node,
            expected_generation,
        } = request.into_inner();
        let needs_node = |node: String| {
            if node.is_empty() {
                Err(Status::invalid_argument("retry and skip need a node name"))
            } else {
                Ok(node)
            }
        };
        let control = match RolloutAction::try_from(action).unwrap_or(RolloutAction::Unspecified) {
            RolloutAction::Pause => Control::Pause,
            RolloutAction::Resume => Control::Resume,
            RolloutAction::Abort => Control::Abort,
            RolloutAction::Retry => Control::Retry(needs_node(node)?),
            RolloutAction::Skip => Control::Skip(needs_node(node)?),
            RolloutAction::Unspecified => {
                return Err(Status::invalid_argument("say what to do with the rollout"));
            }
        };
        let rollout = self
            .engine
            .control(control, &actor, expected_generation)
            .await
            .map_err(status)?;
        self.engine
            .status(rollout.id as u64)
            .await
            .map(Response::new)
            .map_err(status)
    }
}
