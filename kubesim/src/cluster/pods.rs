//! Pod deletion with grace periods, pod health as PodDisruptionBudgets see it, and the
//! violation counter.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::objects::object_ref;
use super::{Cluster, Violation};
use crate::error::ApiError;
use crate::selector::{label_selector_is_empty, label_selector_matches};
use crate::time::Now;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// Options of a pod DELETE (query parameters or a DeleteOptions body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub uid_precondition: Option<String>,
    pub resource_version_precondition: Option<String>,
    pub dry_run: bool,
}

pub fn apply_pod_defaults(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    let status = pod.status.get_or_insert_with(Default::default);
    status.phase.get_or_insert_with(|| "Pending".into());
    status.qos_class.get_or_insert_with(|| "BestEffort".into());
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's Ready condition is True (`podutil.IsPodReady`).
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counted in a PDB's currentHealthy: Ready and not being deleted.
pub fn counts_as_healthy(pod: &Pod) -> bool {
    !is_terminating(pod) && is_ready(pod)
}

pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// PDBs in the pod's namespace whose (non-empty) selector matches it, as the eviction
/// handler finds them. An empty selector matches nothing here.
pub fn matching_pdbs<'a>(cluster: &'a Cluster, pod: &'a Pod) -> Vec<&'a Arc<PodDisruptionBudget>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    cluster
        .pdbs
        .in_namespace(namespace)
        .filter(|pdb| {
            let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
            selector.is_some_and(|s| {
                !label_selector_is_empty(s)
                    && label_selector_matches(s, pod.metadata.labels.as_ref())
            })
        })
        .collect()
}

fn full_name(namespace: Option<&str>, name: Option<&str>) -> String {
    format!(
        "{}/{}",
        namespace.unwrap_or_default(),
        name.unwrap_or_default()
    )
}

impl Cluster {
    /// Counts a violation for every PDB covering `pod` that allowed no disruption, if the pod
    /// was healthy (an unhealthy pod does not reduce the budget's currentHealthy). A budget
    /// that recorded the pod in `disruptedPods` gave this disruption already (an eviction
    /// it admitted).
    pub(crate) fn record_disruption(&mut self, pod: &Pod, action: &str, now: &Now) {
        if !counts_as_healthy(pod) {
            return;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let violated: Vec<String> = matching_pdbs(self, pod)
            .into_iter()
            .filter(|pdb| {
                pdb.status.as_ref().is_none_or(|s| {
                    s.disruptions_allowed <= 0
                        && !s
                            .disrupted_pods
                            .as_ref()
                            .is_some_and(|d| d.contains_key(name))
                })
            })
            .map(|pdb| {
                full_name(
                    pdb.metadata.namespace.as_deref(),
                    pdb.metadata.name.as_deref(),
                )
            })
            .collect();
        let pod_name = full_name(
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        );
        for pdb in violated {
            tracing::warn!(pod = %pod_name, pdb = %pdb, action, "PodDisruptionBudget violated");
            let stats = self.stats_mut();
            stats.pdb_violations += 1;
            stats.violations.push(Violation {
                pod: pod_name.clone(),
                pdb,
                action: action.to_owned(),
                at: now.wall.to_string(),
            });
        }
    }

    /// Deletes a pod as the API server does: pods that never ran or already finished go at
    /// once; others get a deletionTimestamp and disappear when their containers have stopped
    /// (the scenario's termination time, capped by the grace period). `action` names the
    /// API operation for the violation counter.
    pub fn delete_pod(
        &mut self,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
        action: &str,
        now: &Now,
    ) -> Result<Arc<Pod>, ApiError> {
        let current = self
            .pods
            .get(namespace, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(object_ref::<Pod>(name)))?;
        let uid = current.metadata.uid.clone().unwrap_or_default();
        if let Some(expected) = &options.uid_precondition
            && *expected != uid
        {
            return Err(ApiError::conflict(
                object_ref::<Pod>(name),
                &format!(
                    "Precondition failed: UID in precondition: {expected}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(expected) = &options.resource_version_precondition
            && Some(expected.as_str()) != current.metadata.resource_version.as_deref()
        {
            return Err(ApiError::conflict(
                object_ref::<Pod>(name),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {expected}, ResourceVersion in object meta: {}",
                    current.metadata.resource_version.as_deref().unwrap_or("")
                ),
            ));
        }

        let mut grace = options
            .grace_period_seconds
            .or_else(|| {
                current
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS)
            .max(0);
        // Nothing runs for these, so nothing needs time to stop (pod strategy CheckGracefulDelete).
        if node_name(&current).is_none() || matches!(phase(&current), "Succeeded" | "Failed") {
            grace = 0;
        }
        if let Some(existing) = current.metadata.deletion_grace_period_seconds
            && is_terminating(&current)
            && grace >= existing
        {
            // Already terminating at least as fast: nothing to change.
            return Ok(current);
        }
        if options.dry_run {
            let mut preview = (*current).clone();
            preview.metadata.deletion_timestamp =
                Some(now.wall_after(std::time::Duration::from_secs(grace as u64)));
            preview.metadata.deletion_grace_period_seconds = Some(grace);
            return Ok(Arc::new(preview));
        }

        self.record_disruption(&current, action, now);
        self.stats_mut().pods_deleted += 1;
        Ok(self.terminate_pod(&current, grace, now))
    }

    /// Starts the end of a pod without any checks (API deletion after its checks, controllers
    /// scaling down): gone at once with grace 0, else Terminating until its containers stop.
    pub(crate) fn terminate_pod(&mut self, current: &Arc<Pod>, grace: i64, now: &Now) -> Arc<Pod> {
        let uid = current.metadata.uid.clone().unwrap_or_default();
        let namespace = current.metadata.namespace.clone().unwrap_or_default();
        let name = current.metadata.name.clone().unwrap_or_default();
        if grace <= 0 {
            self.sim.forget_pod(&uid);
            return self
                .remove::<Pod>(&namespace, &name)
                .unwrap_or_else(|| current.clone());
        }
        let cluster_seconds = (grace as f64).min(self.config.timings.termination);
        let gone_in = self.config.scale.wall(cluster_seconds);
        let mut terminating = (**current).clone();
        terminating.metadata.deletion_timestamp =
            Some(now.wall_after(self.config.scale.wall(grace as f64)));
        terminating.metadata.deletion_grace_period_seconds = Some(grace);
        self.sim.pod_timers(&uid).remove_at = Some(now.instant + gone_in);
        self.write(terminating)
    }
}
