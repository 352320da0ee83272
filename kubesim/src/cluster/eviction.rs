//! The `pods/{name}/eviction` subresource: the API server's decision whether a pod may be
//! evicted (k8s pkg/registry/core/pod/storage/eviction.go), then the deletion.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::Cluster;
use super::objects::object_ref;
use super::pods::{DeleteOptions, is_ready, is_terminating, matching_pdbs, phase};
use crate::error::{ApiError, ObjectRef};
use crate::time::Now;

/// More unconfirmed disruptions than this in one PDB's status: 403 (eviction.go MaxDisruptedPodSize).
const MAX_DISRUPTED_POD_SIZE: usize = 2000;

const VIOLATES_BUDGET: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// What the eviction handler decides before deleting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictionDecision {
    /// Delete the pod. `pdb` names the budget that allowed it, if one was consulted;
    /// `spends` says whether the disruption is taken from it (eviction.go
    /// checkAndDecrement): not for unready pods the budget can spare.
    Allow { pdb: Option<String>, spends: bool },
    /// Refuse with this error; `pdb` names the budget that refused, if any.
    Refuse {
        error: ApiError,
        pdb: Option<String>,
    },
}

/// Terminal, pending and terminating pods skip the PDB check (eviction.go canIgnorePDB).
pub fn can_ignore_pdb(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed" | "Pending") || is_terminating(pod)
}

/// The eviction rules for `pod` given the PDBs that select it.
pub fn decide(pod: &Pod, pdbs: &[&PodDisruptionBudget]) -> EvictionDecision {
    if can_ignore_pdb(pod) {
        return EvictionDecision::Allow {
            pdb: None,
            spends: false,
        };
    }
    let pdb = match pdbs {
        [] => {
            return EvictionDecision::Allow {
                pdb: None,
                spends: false,
            };
        }
        [one] => *one,
        _ => {
            return EvictionDecision::Refuse {
                error: ApiError::plain_failure(
                    500,
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ),
                pdb: None,
            };
        }
    };
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let status = pdb.status.clone().unwrap_or_default();
    let refuse = |error: ApiError| EvictionDecision::Refuse {
        error,
        pdb: Some(name.clone()),
    };

    // An unready pod does not count towards currentHealthy, so evicting it costs nothing while
    // the budget is met, or always with the AlwaysAllow policy.
    if !is_ready(pod) {
        let always_allow = pdb
            .spec
            .as_ref()
            .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref())
            == Some("AlwaysAllow");
        if always_allow
            || (status.current_healthy >= status.desired_healthy && status.desired_healthy > 0)
        {
            return EvictionDecision::Allow {
                pdb: Some(name),
                spends: false,
            };
        }
    }

    if status.observed_generation.unwrap_or(0) < pdb.metadata.generation.unwrap_or(0) {
        return refuse(ApiError::too_many_requests(VIOLATES_BUDGET, 10).with_cause(
            "DisruptionBudget",
            format!("The disruption budget {name} is still being processed by the server."),
        ));
    }
    let pdb_ref = ObjectRef {
        plural: "poddisruptionbudget",
        group: "policy",
        name: &name,
    };
    if status.disruptions_allowed < 0 {
        return refuse(ApiError::forbidden(
            pdb_ref,
            "pdb disruptions allowed is negative",
        ));
    }
    if status
        .disrupted_pods
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DISRUPTED_POD_SIZE)
    {
        return refuse(ApiError::forbidden(
            pdb_ref,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if status.disruptions_allowed == 0 {
        return refuse(ApiError::too_many_requests(VIOLATES_BUDGET, 0).with_cause(
            "DisruptionBudget",
            format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status.desired_healthy, status.current_healthy
            ),
        ));
    }
    EvictionDecision::Allow {
        pdb: Some(name),
        spends: true,
    }
}

/// How long a budget counts an evicted pod as disrupted while the pod has not
/// started terminating (disruption controller DeletionTimeout).
pub const DELETION_TIMEOUT_SECONDS: f64 = 120.0;

impl Cluster {
    /// Evicts a pod as eviction.go does: decides by the PDB rules; takes the
    /// disruption from the budget (`disruptionsAllowed - 1`, the pod recorded
    /// in `disruptedPods`) before anything else, so that a later failure, such
    /// as a UID precondition that does not hold, leaves the budget spent until
    /// the disruption controller gives the entry up; marks the pod with a
    /// DisruptionTarget condition; then deletes it with `options`.
    pub fn evict(
        &mut self,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
        now: &Now,
    ) -> Result<(), ApiError> {
        let pod = self
            .pods
            .get(namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(object_ref::<Pod>(name)))?;
        let pdbs: Vec<&PodDisruptionBudget> = matching_pdbs(self, &pod)
            .into_iter()
            .map(|p| &**p)
            .collect();
        let decision = decide(&pod, &pdbs);
        let (pdb, spends) = match decision {
            EvictionDecision::Refuse { error, pdb } => {
                if error.code == 429
                    && let Some(pdb) = pdb
                {
                    *self
                        .stats_mut()
                        .evictions_refused
                        .entry(format!("{namespace}/{pdb}"))
                        .or_default() += 1;
                }
                tracing::debug!(pod = %format!("{namespace}/{name}"), code = error.code, "eviction refused");
                return Err(error);
            }
            EvictionDecision::Allow { pdb, spends } => (pdb, spends),
        };
        if spends
            && !options.dry_run
            && let Some(pdb) = pdb
        {
            self.spend_budget(namespace, &pdb, name, now);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(expected) = &options.uid_precondition
            && *expected != uid
        {
            self.stats_mut().evictions_stale_uid += 1;
            return Err(ApiError::conflict(
                ObjectRef {
                    plural: "Pod",
                    group: "",
                    name,
                },
                &format!(
                    "the UID in the precondition ({expected}) does not match the UID in record ({uid}). \
                     The object might have been deleted and then recreated"
                ),
            ));
        }
        if !options.dry_run {
            self.mark_disruption_target(&pod, now);
        }
        let options = DeleteOptions {
            uid_precondition: None,
            ..options.clone()
        };
        self.delete_pod(namespace, name, &options, "eviction", now)?;
        if !options.dry_run {
            self.stats_mut().evictions_accepted += 1;
        }
        Ok(())
    }

    /// checkAndDecrement's write: one disruption fewer, the pod recorded.
    fn spend_budget(&mut self, namespace: &str, pdb: &str, pod: &str, now: &Now) {
        let Some(current) = self.pdbs.get(namespace, pdb).cloned() else {
            return;
        };
        let mut budget = (*current).clone();
        let status = budget.status.get_or_insert_with(Default::default);
        status.disruptions_allowed -= 1;
        status
            .disrupted_pods
            .get_or_insert_with(Default::default)
            .insert(pod.to_string(), now.time());
        if status.disruptions_allowed == 0
            && let Some(condition) = status
                .conditions
                .iter_mut()
                .flatten()
                .find(|c| c.type_ == "DisruptionAllowed")
        {
            condition.status = "False".into();
            condition.reason = "InsufficientPods".into();
            condition.last_transition_time = now.time();
        }
        self.write(budget);
    }

    /// The condition the Eviction API puts on a pod before deleting it.
    fn mark_disruption_target(&mut self, pod: &Pod, now: &Now) {
        let mut marked = pod.clone();
        let conditions = marked
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "DisruptionTarget");
        conditions.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("EvictionByEvictionAPI".into()),
            message: Some("Eviction API: evicting".into()),
            last_transition_time: Some(now.time()),
            ..Default::default()
        });
        self.write(marked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(phase: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pdb(allowed: i32, current: i32, desired: i32, policy: Option<&str>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("budget".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                unhealthy_pod_eviction_policy: policy.map(Into::into),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: allowed,
                current_healthy: current,
                desired_healthy: desired,
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    fn refused_code(decision: EvictionDecision) -> Option<u16> {
        match decision {
            EvictionDecision::Refuse { error, .. } => Some(error.code),
            EvictionDecision::Allow { .. } => None,
        }
    }

    #[test]
    fn exhausted_budget_is_429_with_cause() {
        let d = decide(&pod("Running", true), &[&pdb(0, 2, 2, None)]);
        let EvictionDecision::Refuse { error, pdb } = d else {
            panic!("allowed")
        };
        assert_eq!(error.code, 429);
        assert_eq!(error.reason, "TooManyRequests");
        assert_eq!(error.message, VIOLATES_BUDGET);
        assert_eq!(
            error.causes()[0].message,
            "The disruption budget budget needs 2 healthy pods and has 2 currently"
        );
        assert_eq!(error.retry_after_seconds(), None);
        assert_eq!(pdb.as_deref(), Some("budget"));
    }

    #[test]
    fn budget_left_allows() {
        assert_eq!(
            refused_code(decide(&pod("Running", true), &[&pdb(1, 3, 2, None)])),
            None
        );
    }

    #[test]
    fn pending_finished_and_terminating_pods_skip_the_budget() {
        let exhausted = pdb(0, 2, 2, None);
        for phase in ["Pending", "Succeeded", "Failed"] {
            assert_eq!(
                refused_code(decide(&pod(phase, false), &[&exhausted])),
                None,
                "{phase}"
            );
        }
        let mut terminating = pod("Running", true);
        terminating.metadata.deletion_timestamp = Some(Now::capture().time());
        assert_eq!(refused_code(decide(&terminating, &[&exhausted])), None);
    }

    #[test]
    fn several_budgets_are_a_500_without_reason() {
        let (a, b) = (pdb(5, 5, 0, None), pdb(5, 5, 0, None));
        let EvictionDecision::Refuse { error, .. } = decide(&pod("Running", true), &[&a, &b])
        else {
            panic!()
        };
        assert_eq!((error.code, error.reason), (500, ""));
    }

    #[test]
    fn unhealthy_pods_follow_the_policy() {
        let unready = pod("Running", false);
        // IfHealthyBudget: allowed while the budget is met...
        assert_eq!(refused_code(decide(&unready, &[&pdb(0, 2, 2, None)])), None);
        // ...but not when the application is already disrupted.
        assert_eq!(
            refused_code(decide(&unready, &[&pdb(0, 1, 2, Some("IfHealthyBudget"))])),
            Some(429)
        );
        // desiredHealthy 0 does not count as "met" for unready pods.
        assert_eq!(
            refused_code(decide(&unready, &[&pdb(0, 0, 0, None)])),
            Some(429)
        );
        // AlwaysAllow lets crash-looping pods go.
        assert_eq!(
            refused_code(decide(&unready, &[&pdb(0, 1, 2, Some("AlwaysAllow"))])),
            None
        );
    }

    #[test]
    fn unobserved_generation_is_429_retry_after_10() {
        let mut budget = pdb(3, 3, 0, None);
        budget.metadata.generation = Some(2);
        let EvictionDecision::Refuse { error, .. } = decide(&pod("Running", true), &[&budget])
        else {
            panic!()
        };
        assert_eq!((error.code, error.retry_after_seconds()), (429, Some(10)));
        assert!(error.causes()[0].message.contains("still being processed"));
    }

    #[test]
    fn negative_budget_is_forbidden() {
        assert_eq!(
            refused_code(decide(&pod("Running", true), &[&pdb(-1, 0, 0, None)])),
            Some(403)
        );
    }
}
