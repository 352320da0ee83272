//! PodDisruptionBudget status, computed as the disruption controller does
//! (k8s pkg/controller/disruption): expected pods, desired and current healthy, disruptions
//! allowed, observedGeneration and the DisruptionAllowed condition.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::templates::controller_of;
use crate::cluster::Cluster;
use crate::cluster::pods::counts_as_healthy;
use crate::selector::label_selector_matches;
use crate::time::Now;

/// An `IntOrString` budget value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(i32),
    Percent(i32),
}

/// "25%" -> 25; only whole percentages from 0 to 100, as PDB validation accepts.
pub fn parse_percent(text: &str) -> Option<i32> {
    let number: i32 = text.strip_suffix('%')?.parse().ok()?;
    (0..=100).contains(&number).then_some(number)
}

pub fn parse_int_or_percent(value: &IntOrString) -> Option<Amount> {
    match value {
        IntOrString::Int(n) if *n >= 0 => Some(Amount::Count(*n)),
        IntOrString::Int(_) => None,
        IntOrString::String(s) => parse_percent(s).map(Amount::Percent),
    }
}

/// `intstr.GetScaledValueFromIntOrPercent`: a count as is, a percentage of `total` rounded
/// up or down.
pub fn scaled_value(amount: Amount, total: i32, round_up: bool) -> i32 {
    match amount {
        Amount::Count(n) => n,
        Amount::Percent(p) => {
            let product = i64::from(p) * i64::from(total);
            let value = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            value as i32
        }
    }
}

/// Inputs of the budget math for one PDB.
pub struct BudgetInputs<'a> {
    /// Pods the PDB's selector matches (any state).
    pub pods: &'a [&'a Pod],
    /// The summed scale of the pods' controllers, or why it cannot be known.
    pub expected_scale: Result<i32, String>,
    /// How long an evicted pod that has not started terminating stays
    /// recorded as disrupted (DeletionTimeout, in wall time).
    pub deletion_timeout: std::time::Duration,
}

/// `buildDisruptedPodMap`: the budget's recorded disruptions that still
/// stand. An entry goes once its pod is terminating or gone, or after the
/// deletion timeout; a pod recreated under the same name before the
/// controller saw the old one go keeps the entry (the name is the key).
fn disrupted_pods(
    pdb: &PodDisruptionBudget,
    inputs: &BudgetInputs<'_>,
    now: &Now,
) -> std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    let recorded = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let timeout = k8s_openapi::jiff::SignedDuration::try_from(inputs.deletion_timeout)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO);
    inputs
        .pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let since = recorded.get(&name)?;
            let expires = since.0.checked_add(timeout).ok()?;
            (expires > now.wall).then(|| (name, since.clone()))
        })
        .collect()
}

/// (expectedCount, desiredHealthy), or the error that makes the controller fail safe.
pub fn expected_and_desired(
    pdb: &PodDisruptionBudget,
    inputs: &BudgetInputs<'_>,
) -> Result<(i32, i32), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let amount = |v: &IntOrString| {
        parse_int_or_percent(v).ok_or_else(|| format!("invalid budget value {v:?}"))
    };
    if let Some(max_unavailable) = &spec.max_unavailable {
        let expected = inputs.expected_scale.clone()?;
        let max_unavailable = scaled_value(amount(max_unavailable)?, expected, true);
        return Ok((expected, (expected - max_unavailable).max(0)));
    }
    match spec.min_available.as_ref().map(amount).transpose()? {
        Some(Amount::Count(n)) => Ok((inputs.pods.len() as i32, n)),
        Some(percent) => {
            let expected = inputs.expected_scale.clone()?;
            Ok((expected, scaled_value(percent, expected, true)))
        }
        None => Ok((0, 0)),
    }
}

/// The status the disruption controller would write for `pdb`.
pub fn compute_status(
    pdb: &PodDisruptionBudget,
    inputs: &BudgetInputs<'_>,
    now: &Now,
) -> PodDisruptionBudgetStatus {
    let previous = pdb.status.clone().unwrap_or_default();
    let disrupted = disrupted_pods(pdb, inputs, now);
    let (status, condition) = match expected_and_desired(pdb, inputs) {
        Ok((expected, desired)) => {
            let current = inputs
                .pods
                .iter()
                .filter(|p| counts_as_healthy(p))
                .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
                .count() as i32;
            let allowed = if expected <= 0 {
                0
            } else {
                (current - desired).max(0)
            };
            let condition = if allowed > 0 {
                ("True", "SufficientPods", "")
            } else {
                ("False", "InsufficientPods", "")
            };
            let status = PodDisruptionBudgetStatus {
                current_healthy: current,
                desired_healthy: desired,
                disruptions_allowed: allowed,
                expected_pods: expected,
                observed_generation: pdb.metadata.generation,
                disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
                conditions: previous.conditions.clone(),
            };
            (status, (condition.0, condition.1, condition.2.to_owned()))
        }
        // failSafe: no disruptions, the reason in the condition, the rest as it was.
        Err(why) => (
            PodDisruptionBudgetStatus {
                disruptions_allowed: 0,
                ..previous.clone()
            },
            ("False", "SyncFailed", why),
        ),
    };
    with_condition(status, condition, pdb.metadata.generation, now)
}

fn with_condition(
    mut status: PodDisruptionBudgetStatus,
    (state, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: &Now,
) -> PodDisruptionBudgetStatus {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let existing = conditions
        .iter()
        .position(|c| c.type_ == "DisruptionAllowed");
    let unchanged = existing
        .map(|i| &conditions[i])
        .is_some_and(|c| c.status == state && c.reason == reason && c.message == message);
    if !unchanged {
        let condition = Condition {
            type_: "DisruptionAllowed".into(),
            status: state.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.time(),
        };
        match existing {
            Some(i) => conditions[i] = condition,
            None => conditions.push(condition),
        }
    }
    status
}

/// The summed replica count of the controllers of `pods`: Deployments (through their
/// ReplicaSets), bare ReplicaSets and StatefulSets. Other owners, or none, are an error.
fn expected_scale(cluster: &Cluster, pods: &[&Pod]) -> Result<i32, String> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let owner = controller_of(&pod.metadata)
            .ok_or_else(|| format!("found no controller ref for pod {name:?}"))?;
        let (uid, scale) = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = cluster
                    .replicasets
                    .get(namespace, &owner.name)
                    .ok_or_else(|| format!("found no controllers for pod {name:?}"))?;
                match controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                    Some(d) => {
                        let deployment = cluster
                            .deployments
                            .get(namespace, &d.name)
                            .ok_or_else(|| format!("found no controllers for pod {name:?}"))?;
                        (
                            d.uid.clone(),
                            deployment
                                .spec
                                .as_ref()
                                .and_then(|s| s.replicas)
                                .unwrap_or(1),
                        )
                    }
                    None => (
                        owner.uid.clone(),
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                }
            }
            "StatefulSet" => {
                let sts = cluster
                    .statefulsets
                    .get(namespace, &owner.name)
                    .ok_or_else(|| format!("found no controllers for pod {name:?}"))?;
                (
                    owner.uid.clone(),
                    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                )
            }
            _ => return Err(format!("found no controllers for pod {name:?}")),
        };
        if seen.insert(uid) {
            total += scale;
        }
    }
    Ok(total)
}

/// With a sync delay, a PDB whose generation is not yet observed waits that long first.
fn observation_due(
    cluster: &mut Cluster,
    pdb: &PodDisruptionBudget,
    delay: std::time::Duration,
    now: &Now,
) -> bool {
    let generation = pdb.metadata.generation.unwrap_or(0);
    let observed = pdb
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    if generation <= observed {
        return true;
    }
    let uid = pdb.metadata.uid.clone().unwrap_or_default();
    cluster.sim.replacement_is_due(
        &uid,
        &format!("observe-generation-{generation}"),
        delay,
        now,
    )
}

pub(super) fn sync(cluster: &mut Cluster, now: &Now) -> bool {
    let mut changed = false;
    let budgets: Vec<Arc<PodDisruptionBudget>> = cluster.pdbs.iter().cloned().collect();
    let sync_delay = cluster
        .config
        .scale
        .wall(cluster.config.timings.pdb_sync_delay);
    for pdb in budgets {
        if !sync_delay.is_zero() && !observation_due(cluster, &pdb, sync_delay, now) {
            continue;
        }
        let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.clone());
        // policy/v1: an empty selector matches every pod in the namespace, a missing one none.
        let pods: Vec<&Pod> = match &selector {
            Some(sel) => cluster
                .pods
                .in_namespace(&namespace)
                .filter(|p| label_selector_matches(sel, p.metadata.labels.as_ref()))
                .map(|p| &**p)
                .collect(),
            None => Vec::new(),
        };
        let inputs = BudgetInputs {
            pods: &pods,
            expected_scale: expected_scale(cluster, &pods),
            deletion_timeout: cluster
                .config
                .scale
                .wall(crate::cluster::eviction::DELETION_TIMEOUT_SECONDS),
        };
        let status = compute_status(&pdb, &inputs, now);
        if pdb.status.as_ref() != Some(&status) {
            let mut updated = (*pdb).clone();
            updated.status = Some(status);
            cluster.write(updated);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(ready: bool, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                deletion_timestamp: terminating.then(|| Now::capture().time()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
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

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..Default::default()
            }),
            status: None,
        }
    }

    fn status_for(
        pdb: &PodDisruptionBudget,
        pods: &[Pod],
        scale: Result<i32, String>,
    ) -> PodDisruptionBudgetStatus {
        let refs: Vec<&Pod> = pods.iter().collect();
        compute_status(
            pdb,
            &BudgetInputs {
                pods: &refs,
                expected_scale: scale,
                deletion_timeout: std::time::Duration::from_secs(120),
            },
            &Now::capture(),
        )
    }

    #[test]
    fn percent_rounding_matches_intstr() {
        assert_eq!(scaled_value(Amount::Percent(50), 3, true), 2);
        assert_eq!(scaled_value(Amount::Percent(50), 3, false), 1);
        assert_eq!(scaled_value(Amount::Percent(34), 3, true), 2);
        assert_eq!(scaled_value(Amount::Percent(33), 3, true), 1);
        assert_eq!(scaled_value(Amount::Percent(100), 7, true), 7);
        assert_eq!(scaled_value(Amount::Percent(0), 7, true), 0);
        assert_eq!(scaled_value(Amount::Count(4), 7, true), 4);
        assert_eq!(parse_percent("101%"), None);
        assert_eq!(parse_percent("50"), None);
        assert_eq!(parse_percent("25%"), Some(25));
    }

    #[test]
    fn min_available_count_uses_matching_pods() {
        let pods = [pod(true, false), pod(true, false), pod(true, false)];
        let s = status_for(
            &pdb(Some(IntOrString::Int(2)), None),
            &pods,
            Err("unused".into()),
        );
        assert_eq!(
            (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed
            ),
            (3, 2, 3, 1)
        );
        assert_eq!(s.observed_generation, Some(3));
        let c = &s.conditions.unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );
    }

    #[test]
    fn terminating_and_unready_pods_are_not_healthy() {
        let pods = [pod(true, false), pod(true, true), pod(false, false)];
        let s = status_for(&pdb(Some(IntOrString::Int(1)), None), &pods, Ok(3));
        assert_eq!((s.current_healthy, s.disruptions_allowed), (1, 0));
        assert_eq!(s.conditions.unwrap()[0].reason, "InsufficientPods");
    }

    #[test]
    fn max_unavailable_percent_rounds_up_against_scale() {
        // 5 replicas, maxUnavailable 30% -> ceil(1.5) = 2 unavailable -> desired 3.
        let pods: Vec<Pod> = (0..5).map(|_| pod(true, false)).collect();
        let s = status_for(
            &pdb(None, Some(IntOrString::String("30%".into()))),
            &pods,
            Ok(5),
        );
        assert_eq!(
            (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
            (5, 3, 2)
        );
    }

    #[test]
    fn min_available_percent_rounds_up_against_scale() {
        // 3 replicas, minAvailable 50% -> ceil(1.5) = 2.
        let pods: Vec<Pod> = (0..3).map(|_| pod(true, false)).collect();
        let s = status_for(
            &pdb(Some(IntOrString::String("50%".into())), None),
            &pods,
            Ok(3),
        );
        assert_eq!((s.desired_healthy, s.disruptions_allowed), (2, 1));
    }

    #[test]
    fn unknown_controller_fails_safe() {
        let pods = [pod(true, false)];
        let s = status_for(
            &pdb(None, Some(IntOrString::Int(1))),
            &pods,
            Err("found no controller ref for pod \"x\"".into()),
        );
        assert_eq!(s.disruptions_allowed, 0);
        assert_eq!(s.observed_generation, None);
        let c = &s.conditions.unwrap()[0];
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("SyncFailed", "found no controller ref for pod \"x\"")
        );
    }

    #[test]
    fn no_expected_pods_allows_nothing() {
        let s = status_for(&pdb(None, Some(IntOrString::Int(1))), &[], Ok(0));
        assert_eq!(s.disruptions_allowed, 0);
    }
}
