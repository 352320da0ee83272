//! A drain's plan: the selection plus what the budgets say about it. The dry
//! run shows it; a drain sends it first and refuses to start while any pod is
//! refused, so a drain never stops half-way over something known up front.

use std::collections::BTreeSet;

use k3sfleet_proto::v1::{DrainPlan, PdbBlock, SkippedPod};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use tokio::time::Instant;

use super::pdb::{self, PdbView, pod_ref};
use super::retry::RetryPolicy;
use super::selection::{self, SelectionOptions, pod_key};
use super::{DrainError, DrainOptions};

/// Transient failures tolerated per lookup when nothing else bounds it.
const LOOKUP_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub evict: Vec<Pod>,
    pub skipped: Vec<(Pod, String)>,
    pub refused: Vec<(Pod, String)>,
    pub blocking: Vec<PdbBlock>,
}

impl Plan {
    pub fn build(
        pods: Vec<Pod>,
        pdbs: &[PodDisruptionBudget],
        missing_daemonsets: &BTreeSet<(String, String)>,
        options: &DrainOptions,
    ) -> Plan {
        let selection = selection::select(
            pods,
            SelectionOptions {
                delete_emptydir_data: options.delete_emptydir_data,
                force: options.force,
            },
            missing_daemonsets,
        );
        let views = PdbView::all(pdbs);
        let mut evict = Vec::new();
        let mut refused = selection.refused;
        for pod in selection.evict {
            let covering = pdb::covering(&views, &pod);
            if covering.len() > 1 && pdb::consults_budget(&pod) {
                let mut names: Vec<&str> = covering.iter().map(|p| p.key.as_str()).collect();
                names.sort();
                refused.push((
                    pod,
                    format!(
                        "covered by {} PodDisruptionBudgets ({}), which the Eviction API refuses: \
                         leave one budget per pod",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            } else {
                evict.push(pod);
            }
        }
        refused.sort_by_key(|(pod, _)| pod_key(pod));
        let blocking = pdb::blocking(&views, &evict);
        Plan {
            evict,
            skipped: selection.skipped,
            refused,
            blocking,
        }
    }

    pub fn to_proto(&self) -> DrainPlan {
        let listed = |pods: &[(Pod, String)]| {
            pods.iter()
                .map(|(pod, reason)| SkippedPod {
                    pod: Some(pod_ref(pod)),
                    reason: reason.clone(),
                })
                .collect()
        };
        DrainPlan {
            evict: self.evict.iter().map(pod_ref).collect(),
            skipped: listed(&self.skipped),
            refused: listed(&self.refused),
            blocking: self.blocking.clone(),
        }
    }

    /// Why the drain cannot start, if it cannot.
    pub fn refusal(&self, node: &str) -> Option<String> {
        refusal_text(
            node,
            self.refused
                .iter()
                .map(|(pod, why)| format!("{} ({why})", pod_key(pod)))
                .collect(),
        )
    }
}

/// Why a drain with this (dry-run) plan cannot start, if it cannot.
pub fn refusal_of(node: &str, plan: &DrainPlan) -> Option<String> {
    refusal_text(
        node,
        plan.refused
            .iter()
            .map(|refused| {
                let pod = refused.pod.clone().unwrap_or_default();
                format!("{}/{} ({})", pod.namespace, pod.name, refused.reason)
            })
            .collect(),
    )
}

fn refusal_text(node: &str, pods: Vec<String>) -> Option<String> {
    if pods.is_empty() {
        return None;
    }
    Some(format!(
        "cannot drain {node}: {} cannot be evicted: {}",
        count(pods.len(), "pod"),
        pods.join("; ")
    ))
}

/// "1 pod", "3 pods".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The DaemonSets that `pods` name as their controller but that do not exist.
/// Transient API failures are retried until `deadline` (or a few times).
pub async fn missing_daemonsets(
    client: &kube::Client,
    pods: &[Pod],
    deadline: Option<Instant>,
) -> Result<BTreeSet<(String, String)>, DrainError> {
    let mut missing = BTreeSet::new();
    for (namespace, name) in selection::daemonsets_to_check(pods) {
        let api = Api::<DaemonSet>::namespaced(client.clone(), &namespace);
        let mut attempt = 0;
        let found = loop {
            attempt += 1;
            match api.get_opt(&name).await {
                Ok(found) => break found.is_some(),
                Err(error) => {
                    let delay = RetryPolicy::DEFAULT.delay(attempt);
                    let more_time = match deadline {
                        Some(deadline) => Instant::now() + delay < deadline,
                        None => attempt < LOOKUP_ATTEMPTS,
                    };
                    if !super::error::is_transient(&error) || !more_time {
                        return Err(DrainError::kubernetes(
                            format!("reading DaemonSet {namespace}/{name}"),
                            error,
                        ));
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        };
        if !found {
            missing.insert((namespace, name));
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::pdb::tests::{app_pod, pdb};

    #[test]
    fn pods_under_two_budgets_are_refused_before_anything_is_evicted() {
        let pods = vec![app_pod("web-1", "web", "n"), app_pod("api-1", "api", "n")];
        let mut both = pdb("everything", "x", 2, 1, 1);
        both.spec.as_mut().unwrap().selector = Some(Default::default());
        let plan = Plan::build(
            pods,
            &[pdb("web", "web", 2, 1, 1), both],
            &BTreeSet::new(),
            &DrainOptions::default(),
        );
        assert_eq!(plan.evict.len(), 1);
        assert_eq!(pod_key(&plan.evict[0]), "shop/api-1");
        let refusal = plan.refusal("worker-1").unwrap();
        assert_eq!(
            refusal,
            "cannot drain worker-1: 1 pod cannot be evicted: shop/web-1 (covered by 2 \
             PodDisruptionBudgets (shop/everything, shop/web), which the Eviction API refuses: \
             leave one budget per pod)"
        );
    }

    #[test]
    fn the_plan_lists_every_group() {
        let mut bare = app_pod("debug", "debug", "n");
        bare.metadata.owner_references = None;
        let plan = Plan::build(
            vec![
                app_pod("web-1", "web", "n"),
                app_pod("web-2", "web", "n"),
                bare,
            ],
            &[pdb("web", "web", 3, 3, 0)],
            &BTreeSet::new(),
            &DrainOptions::default(),
        )
        .to_proto();
        let names: Vec<&str> = plan.evict.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web-1", "web-2"]);
        assert_eq!(plan.refused.len(), 1);
        assert!(plan.refused[0].reason.contains("--force"));
        assert_eq!(plan.blocking.len(), 1);
        assert_eq!(plan.blocking[0].pdb, "shop/web");
        assert_eq!(plan.blocking[0].pods.len(), 2);
    }
}
