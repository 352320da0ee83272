//! PodDisruptionBudgets as the drain sees them: which pods each covers, and
//! whether the API server would let one go right now (its rules, from
//! pkg/registry/core/pod/storage/eviction.go).

use std::collections::BTreeMap;

use k3sfleet_proto::v1::PdbBlock;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{self, Timestamp};
use kube::core::{Selector, SelectorExt};

use super::selection::{is_ready, is_terminating, phase};
use crate::rollout::planner::Budget;

/// One budget and its live status.
#[derive(Debug, Clone, PartialEq)]
pub struct PdbView {
    /// "namespace/name".
    pub key: String,
    pub namespace: String,
    /// None: the PDB has no (or an unusable) selector and covers nothing.
    selector: Option<Selector>,
    pub current_healthy: i32,
    pub desired_healthy: i32,
    pub disruptions_allowed: i32,
    /// The disruption controller has seen the current spec; until then the
    /// server refuses every eviction it guards.
    pub observed: bool,
    /// `unhealthyPodEvictionPolicy: AlwaysAllow`.
    pub always_allow_unhealthy: bool,
    pub resource_version: Option<String>,
    /// Pods the disruption controller expects (the workload's scale).
    pub expected_pods: i32,
    /// Longhorn's budget on a node's instance manager, which Longhorn lifts
    /// by itself once the node's volumes allow.
    pub longhorn_instance_manager: bool,
    /// `status.disruptedPods`: pods an accepted eviction took a disruption
    /// for, by name, with the eviction's time.
    pub disrupted: Vec<(String, Timestamp)>,
}

/// How long the disruption controller keeps counting a pod as disrupted when
/// it does not see it go (pkg/controller/disruption: DeletionTimeout).
const DISRUPTION_FORGOTTEN_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

impl PdbView {
    pub fn new(pdb: &PodDisruptionBudget) -> Self {
        let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
        let name = pdb.metadata.name.as_deref().unwrap_or_default();
        let spec = pdb.spec.as_ref();
        let selector = spec
            .and_then(|spec| spec.selector.clone())
            .and_then(|selector| Selector::try_from(selector).ok());
        let status = pdb.status.clone().unwrap_or_default();
        PdbView {
            key: format!("{namespace}/{name}"),
            namespace,
            selector,
            current_healthy: status.current_healthy,
            desired_healthy: status.desired_healthy,
            disruptions_allowed: status.disruptions_allowed,
            observed: status.observed_generation.unwrap_or(0)
                >= pdb.metadata.generation.unwrap_or(0),
            always_allow_unhealthy: spec
                .and_then(|spec| spec.unhealthy_pod_eviction_policy.as_deref())
                == Some("AlwaysAllow"),
            resource_version: pdb.metadata.resource_version.clone(),
            expected_pods: status.expected_pods,
            longhorn_instance_manager: pdb.metadata.namespace.as_deref()
                == Some(crate::longhorn::NAMESPACE)
                && spec
                    .and_then(|spec| spec.selector.as_ref())
                    .and_then(|selector| selector.match_labels.as_ref())
                    .and_then(|labels| labels.get(crate::longhorn::COMPONENT_LABEL))
                    .is_some_and(|component| component == crate::longhorn::INSTANCE_MANAGER),
            disrupted: status
                .disrupted_pods
                .unwrap_or_default()
                .into_iter()
                .map(|(pod, time)| (pod, time.0))
                .collect(),
        }
    }

    /// Why the budget is down by pods it counts as disrupted, when it is: the
    /// controller keeps an entry until it sees that pod terminate, which it
    /// misses when a StatefulSet brings the pod back under its name first;
    /// then only the timeout ends it, and waiting is all there is to do.
    pub fn earlier_evictions(&self) -> Option<String> {
        let latest = self.disrupted.iter().map(|(_, time)| *time).max()?;
        let pods: Vec<&str> = self.disrupted.iter().map(|(pod, _)| pod.as_str()).collect();
        let until = latest.checked_add(DISRUPTION_FORGOTTEN_AFTER).ok()?;
        Some(format!(
            "the budget still counts {} as disrupted by an earlier eviction until Kubernetes sees \
             the pod go, or at the latest until {} (two minutes after the eviction)",
            pods.join(", "),
            until.strftime("%H:%M:%SZ")
        ))
    }

    /// Why a refusal came although the budget has room, with no earlier
    /// eviction held: its status lags the pods (Kubernetes' disruption
    /// controller recomputes it after a replacement turns Ready), or it was
    /// recomputed right after the refusal. The next attempt will do.
    pub fn status_behind(&self) -> Option<String> {
        if !self.disrupted.is_empty() {
            return None;
        }
        if self.disruptions_allowed > 0 {
            return Some(format!(
                "the budget allows {} now: the disruption controller was behind when the eviction \
                 was asked",
                self.disruptions_allowed
            ));
        }
        (self.current_healthy > self.desired_healthy).then(|| {
            format!(
                "the budget counts {} healthy of the {} it wants but allows no disruption yet: \
                 the disruption controller is behind",
                self.current_healthy, self.desired_healthy
            )
        })
    }

    /// Why this budget can never allow a disruption while every pod it
    /// covers is healthy, and what would fix it; `None` when it can (or
    /// will, by itself: Longhorn lifts its instance managers' budgets).
    pub fn never_allows(&self) -> Option<String> {
        if self.longhorn_instance_manager
            || !self.observed
            || self.expected_pods <= 0
            || self.desired_healthy < self.expected_pods
        {
            return None;
        }
        let fix = if self.expected_pods == 1 {
            "a single instance cannot be kept up through a drain: run more instances, or drop \
             the budget (CloudNativePG's enablePDB: false for a one-instance cluster)"
        } else {
            "give the workload more replicas than that, or lower minAvailable / raise maxUnavailable"
        };
        Some(format!(
            "PDB {} wants {} of its {} pods healthy, so it never allows a disruption while they \
             all are: {fix}",
            self.key, self.desired_healthy, self.expected_pods
        ))
    }

    pub fn all(pdbs: &[PodDisruptionBudget]) -> Vec<PdbView> {
        pdbs.iter().map(PdbView::new).collect()
    }

    /// Same namespace, and the selector matches (policy/v1: an empty selector
    /// matches every pod of the namespace).
    pub fn covers(&self, pod: &Pod) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        if pod.metadata.namespace.as_deref() != Some(self.namespace.as_str()) {
            return false;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        selector.matches(&labels)
    }

    /// The server would accept one more eviction of a healthy pod.
    pub fn allows_disruption(&self) -> bool {
        self.observed && self.disruptions_allowed > 0
    }

    /// Whether evicting `pod` takes a disruption from this budget: the server
    /// lets unready pods go for free while the budget is met (or always, with
    /// AlwaysAllow).
    fn costs_a_disruption(&self, pod: &Pod) -> bool {
        if !consults_budget(pod) {
            return false;
        }
        if is_ready(pod) {
            return true;
        }
        let met = self.current_healthy >= self.desired_healthy && self.desired_healthy > 0;
        !(self.always_allow_unhealthy || met)
    }
}

/// The server checks budgets only for pods that are not Pending, finished or
/// already terminating (eviction.go canIgnorePDB).
pub fn consults_budget(pod: &Pod) -> bool {
    !matches!(phase(pod), "Pending" | "Succeeded" | "Failed") && !is_terminating(pod)
}

/// The budgets covering `pod`.
pub fn covering<'a>(pdbs: &'a [PdbView], pod: &Pod) -> Vec<&'a PdbView> {
    pdbs.iter().filter(|pdb| pdb.covers(pod)).collect()
}

/// The budgets that would refuse at least one of these evictions right now:
/// they cover more of the pods than they allow disruptions, or have not yet
/// observed their current spec. Sorted by budget.
pub fn blocking(pdbs: &[PdbView], evict: &[Pod]) -> Vec<PdbBlock> {
    let mut blocks = Vec::new();
    for pdb in pdbs {
        let costly: Vec<&Pod> = evict
            .iter()
            .filter(|pod| pdb.covers(pod) && pdb.costs_a_disruption(pod))
            .collect();
        if costly.is_empty() {
            continue;
        }
        let allowed = if pdb.observed {
            pdb.disruptions_allowed.max(0) as usize
        } else {
            0
        };
        if costly.len() > allowed {
            blocks.push(PdbBlock {
                pdb: pdb.key.clone(),
                current_healthy: pdb.current_healthy,
                desired_healthy: pdb.desired_healthy,
                disruptions_allowed: pdb.disruptions_allowed,
                pods: costly.into_iter().map(pod_ref).collect(),
                permanent: pdb.never_allows().unwrap_or_default(),
                longhorn: String::new(),
            });
        }
    }
    blocks.sort_by(|a, b| a.pdb.cmp(&b.pdb));
    blocks
}

/// Every budget with the disruptions it allows now and, per node, the healthy
/// (Ready, not terminating) pods it covers there. Sorted by budget.
pub fn budgets(pdbs: &[PodDisruptionBudget], pods: &[Pod]) -> Vec<Budget> {
    let mut budgets: Vec<Budget> = PdbView::all(pdbs)
        .into_iter()
        .map(|pdb| {
            let mut pods_on: BTreeMap<String, u32> = BTreeMap::new();
            for pod in pods {
                let node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_ref());
                if let Some(node) = node
                    && is_ready(pod)
                    && !is_terminating(pod)
                    && pdb.covers(pod)
                {
                    *pods_on.entry(node.clone()).or_default() += 1;
                }
            }
            let allowed = if pdb.observed {
                pdb.disruptions_allowed.max(0) as u32
            } else {
                0
            };
            Budget {
                permanent: pdb.never_allows(),
                name: pdb.key,
                allowed,
                pods_on,
            }
        })
        .collect();
    budgets.sort_by(|a, b| a.name.cmp(&b.name));
    budgets
}

pub fn pod_ref(pod: &Pod) -> k3sfleet_proto::v1::PodRef {
    k3sfleet_proto::v1::PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::drain::selection::tests::pod;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };

    /// A budget in "shop" selecting app=`app`.
    pub fn pdb(
        name: &str,
        app: &str,
        current: i32,
        desired: i32,
        allowed: i32,
    ) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                generation: Some(1),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), app.to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                current_healthy: current,
                desired_healthy: desired,
                disruptions_allowed: allowed,
                observed_generation: Some(1),
                ..Default::default()
            }),
        }
    }

    /// A ready pod of app `app` on `node`.
    pub fn app_pod(name: &str, app: &str, node: &str) -> Pod {
        let mut pod = pod(name);
        pod.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        pod.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        set_ready(&mut pod, true);
        pod
    }

    fn set_ready(pod: &mut Pod, ready: bool) {
        pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]);
    }

    fn names(block: &PdbBlock) -> Vec<&str> {
        block.pods.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn selectors_match_labels_within_the_namespace() {
        let view = PdbView::new(&pdb("web", "web", 3, 3, 0));
        assert!(view.covers(&app_pod("web-1", "web", "n")));
        assert!(!view.covers(&app_pod("db-1", "db", "n")));
        let mut elsewhere = app_pod("web-2", "web", "n");
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!view.covers(&elsewhere));
    }

    #[test]
    fn expressions_empty_and_missing_selectors() {
        let mut with_expression = pdb("web", "web", 1, 1, 0);
        with_expression.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: Some(vec!["web".into(), "api".into()]),
            }]),
            ..Default::default()
        });
        let view = PdbView::new(&with_expression);
        assert!(view.covers(&app_pod("api-1", "api", "n")));
        assert!(!view.covers(&app_pod("db-1", "db", "n")));

        let mut empty = pdb("all", "x", 1, 1, 0);
        empty.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        assert!(PdbView::new(&empty).covers(&app_pod("db-1", "db", "n")));

        let mut missing = pdb("none", "x", 1, 1, 0);
        missing.spec.as_mut().unwrap().selector = None;
        assert!(!PdbView::new(&missing).covers(&app_pod("db-1", "db", "n")));
    }

    #[test]
    fn a_budget_blocks_when_the_node_holds_more_than_it_allows() {
        let pdbs = PdbView::all(&[pdb("web", "web", 4, 3, 1), pdb("db", "db", 3, 2, 1)]);
        let evict = [
            app_pod("web-1", "web", "n"),
            app_pod("web-2", "web", "n"),
            app_pod("db-1", "db", "n"),
        ];
        let blocks = blocking(&pdbs, &evict);
        assert_eq!(blocks.len(), 1, "{blocks:?}");
        assert_eq!(blocks[0].pdb, "shop/web");
        assert_eq!(names(&blocks[0]), ["web-1", "web-2"]);
        assert_eq!(
            (blocks[0].current_healthy, blocks[0].desired_healthy),
            (4, 3)
        );
    }

    #[test]
    fn pods_the_server_lets_go_freely_do_not_block() {
        let pdbs = PdbView::all(&[pdb("web", "web", 3, 3, 0)]);
        let mut pending = app_pod("web-1", "web", "n");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut terminating = app_pod("web-2", "web", "n");
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        // Unready while the budget is met: free.
        let mut unready = app_pod("web-3", "web", "n");
        set_ready(&mut unready, false);
        assert!(blocking(&pdbs, &[pending, terminating, unready.clone()]).is_empty());

        // Unready while the application is already short: refused, unless AlwaysAllow.
        let mut short = pdb("web", "web", 2, 3, 0);
        assert_eq!(
            blocking(&PdbView::all(&[short.clone()]), &[unready.clone()]).len(),
            1
        );
        short.spec.as_mut().unwrap().unhealthy_pod_eviction_policy = Some("AlwaysAllow".into());
        assert!(blocking(&PdbView::all(&[short]), &[unready]).is_empty());
    }

    #[test]
    fn a_budget_that_wants_every_pod_never_allows_one_and_says_how_to_fix_it() {
        let mut all = pdb("db-primary", "db", 1, 1, 0);
        all.status.as_mut().unwrap().expected_pods = 1;
        let why = PdbView::new(&all).never_allows().unwrap();
        assert!(
            why.contains("wants 1 of its 1 pods") && why.contains("enablePDB"),
            "{why}"
        );
        // Exhausted now, but it will recover once a replacement is Ready.
        let mut short = pdb("web", "web", 2, 2, 0);
        short.status.as_mut().unwrap().expected_pods = 3;
        assert_eq!(PdbView::new(&short).never_allows(), None);
        // Longhorn lifts its own budgets.
        let mut longhorn = pdb("instance-manager-abc", "x", 1, 1, 0);
        longhorn.metadata.namespace = Some("longhorn-system".into());
        longhorn.status.as_mut().unwrap().expected_pods = 1;
        longhorn.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some(
                [(
                    "longhorn.io/component".to_string(),
                    "instance-manager".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        });
        let view = PdbView::new(&longhorn);
        assert!(view.longhorn_instance_manager);
        assert_eq!(view.never_allows(), None);
    }

    #[test]
    fn a_budget_whose_status_lags_its_pods_says_so() {
        let behind = PdbView::new(&pdb("web", "web", 4, 3, 0))
            .status_behind()
            .unwrap();
        assert!(
            behind.contains("counts 4 healthy of the 3 it wants"),
            "{behind}"
        );
        let caught_up = PdbView::new(&pdb("web", "web", 4, 3, 1))
            .status_behind()
            .unwrap();
        assert!(caught_up.contains("allows 1 now"), "{caught_up}");
        // At its minimum the budget is right to refuse: nothing to explain.
        assert_eq!(
            PdbView::new(&pdb("web", "web", 3, 3, 0)).status_behind(),
            None
        );
    }

    #[test]
    fn a_budget_down_by_an_earlier_eviction_says_until_when() {
        let mut db = pdb("db", "db", 2, 3, 0);
        assert_eq!(PdbView::new(&db).earlier_evictions(), None);
        let evicted: k8s_openapi::jiff::Timestamp = "2026-12-01T10:00:05Z".parse().unwrap();
        db.status.as_mut().unwrap().disrupted_pods = Some(
            [(
                "db-0".to_string(),
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(evicted),
            )]
            .into(),
        );
        let note = PdbView::new(&db).earlier_evictions().unwrap();
        assert!(
            note.contains("counts db-0 as disrupted") && note.contains("until 10:02:05Z"),
            "{note}"
        );
    }

    #[test]
    fn an_unobserved_budget_blocks_everything_it_covers() {
        let mut changed = pdb("web", "web", 5, 1, 4);
        changed.metadata.generation = Some(2);
        let view = PdbView::new(&changed);
        assert!(!view.allows_disruption());
        assert_eq!(blocking(&[view], &[app_pod("web-1", "web", "n")]).len(), 1);
    }

    #[test]
    fn budgets_count_healthy_pods_per_node() {
        let mut unready = app_pod("web-3", "web", "n2");
        set_ready(&mut unready, false);
        let mut leaving = app_pod("web-4", "web", "n2");
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let pods = [
            app_pod("web-1", "web", "n1"),
            app_pod("web-2", "web", "n1"),
            app_pod("web-5", "web", "n2"),
            unready,
            leaving,
            app_pod("db-1", "db", "n1"),
        ];
        let mut stale = pdb("db", "db", 1, 0, 1);
        stale.metadata.generation = Some(3);
        let budgets = budgets(
            &[
                pdb("web", "web", 3, 2, 1),
                stale,
                pdb("idle", "none", 0, 0, 0),
            ],
            &pods,
        );
        let names: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["shop/db", "shop/idle", "shop/web"]);
        let web = &budgets[2];
        assert_eq!(web.allowed, 1);
        assert_eq!(
            web.pods_on,
            [("n1".to_string(), 2), ("n2".to_string(), 1)].into()
        );
        // A budget the controller has not observed allows nothing yet.
        assert_eq!(budgets[0].allowed, 0);
        assert!(budgets[1].pods_on.is_empty());
    }
}
