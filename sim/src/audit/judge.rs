//! The judge: a pure function from what was observed (every change to pods
//! and PodDisruptionBudgets with its resourceVersion, and the API servers'
//! audit records) to the verdict. It shares no code with the drain engine
//! (coordinator/src/drain): its own notion of a healthy pod, of a budget
//! covering a pod, and of who cordoned a node.
//!
//! (a) **Unbudgeted disruptions.** Changes are replayed in resourceVersion
//! order (etcd's revision: one order for all kinds, across API servers). A
//! pod is healthy while it is Ready, running and not terminating; it is
//! disrupted when it starts terminating or is deleted. A disruption the
//! Eviction API admitted is recorded in its budget's
//! `status.disruptedPods` before the pod is touched, so it is fine. Any
//! other disruption of a healthy pod spends its budget's allowance (the
//! last `disruptionsAllowed` the budget reported, less what was already
//! spent since); one made with no allowance left is a violation, unless a
//! workload controller of the cluster made it (ReplicaSet scale-down, the
//! garbage collector: the owner's doing, not a drain's), which is counted
//! apart. Who made it comes from the audit record of the DELETE whose
//! response carries the same resourceVersion.
//!
//! (b) **Direct deletes by the coordinator.** Every audited DELETE of a pod
//! (not an eviction) by the coordinator's user, whatever the answer, of a
//! pod a budget covers.
//!
//! (c) **Cordons.** Node writes in the audit log, replayed in
//! resourceVersion order of their responses, say who set
//! `spec.unschedulable` and who cleared it: a cordon the coordinator made
//! and never lifted is left behind; a cordon someone else made that the
//! coordinator lifted is a foreign uncordon.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One observed change, as a watch reported it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The object's resourceVersion after the change (etcd's revision).
    pub rv: u64,
    pub object: Object,
    /// The watch said DELETED.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub enum Object {
    Pod(Box<Pod>),
    Pdb(Box<PodDisruptionBudget>),
}

/// What the judge needs of one audit event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// The resourceVersion of the object in the response, if it carried one.
    pub response_rv: Option<u64>,
    /// For node writes: `spec.unschedulable` of the node in the response.
    pub unschedulable_after: Option<bool>,
    /// When the API server finished the request (RFC 3339).
    pub time: String,
}

impl AuditRecord {
    pub fn is_pod_delete(&self) -> bool {
        self.verb == "delete" && self.resource == "pods" && self.subresource.is_empty()
    }

    pub fn is_eviction(&self) -> bool {
        self.verb == "create" && self.resource == "pods" && self.subresource == "eviction"
    }

    fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// A disruption the judge counted, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disruption {
    pub pod: String,
    pub pdb: String,
    pub by: String,
    pub rv: u64,
}

impl std::fmt::Display for Disruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (budget {}) disrupted by {} at resourceVersion {}",
            self.pod, self.pdb, self.by, self.rv
        )
    }
}

/// The judge's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// (a) healthy covered pods disrupted while their budget allowed none.
    pub unbudgeted_disruptions: Vec<Disruption>,
    /// The same made by the cluster's workload controllers: not judged.
    pub controller_disruptions: Vec<Disruption>,
    /// (b) direct DELETEs of covered pods by the coordinator: "ns/name -> code".
    pub coordinator_deletes: Vec<String>,
    /// (c) nodes the coordinator cordoned and left cordoned.
    pub cordons_left: Vec<String>,
    /// (c) nodes someone else cordoned whose cordon the coordinator lifted.
    pub foreign_uncordons: Vec<String>,
    /// Eviction requests per (user, answer code).
    pub evictions: BTreeMap<(String, u16), u64>,
}

impl Verdict {
    /// The three counts every real-tier test asserts are zero.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.unbudgeted_disruptions.len(),
            self.coordinator_deletes.len(),
            self.cordons_left.len() + self.foreign_uncordons.len(),
        )
    }

    pub fn is_clean(&self) -> bool {
        self.counts() == (0, 0, 0)
    }

    /// Eviction requests by `user` answered `code`.
    pub fn evictions_by(&self, user: &str, code: u16) -> u64 {
        self.evictions
            .get(&(user.to_string(), code))
            .copied()
            .unwrap_or(0)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b, c) = self.counts();
        write!(
            f,
            "{a} disruptions a budget did not allow, {b} direct deletes of covered pods by the coordinator, \
             {c} cordons left behind or lifted without being the coordinator's"
        )?;
        for line in self
            .unbudgeted_disruptions
            .iter()
            .map(ToString::to_string)
            .chain(
                self.coordinator_deletes
                    .iter()
                    .map(|d| format!("deleted {d}")),
            )
            .chain(
                self.cordons_left
                    .iter()
                    .map(|n| format!("{n} left cordoned")),
            )
            .chain(self.foreign_uncordons.iter().cloned())
        {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// Users whose pod deletions are the workloads' own controllers at work.
fn is_cluster_controller(user: &str) -> bool {
    user.starts_with("system:serviceaccount:kube-system:")
        || user == "system:kube-controller-manager"
}

pub fn judge(changes: &[Change], audit: &[AuditRecord], coordinator: &str) -> Verdict {
    let mut verdict = Verdict::default();
    judge_disruptions(changes, audit, &mut verdict);
    judge_deletes(changes, audit, coordinator, &mut verdict);
    judge_cordons(audit, coordinator, &mut verdict);
    for record in audit.iter().filter(|r| r.is_eviction()) {
        *verdict
            .evictions
            .entry((record.user.clone(), record.code))
            .or_default() += 1;
    }
    verdict
}

/// A budget as the replay knows it.
struct Budget {
    pdb: PodDisruptionBudget,
    /// Disruptions still allowed since its status last changed.
    allowance: i64,
}

fn judge_disruptions(changes: &[Change], audit: &[AuditRecord], verdict: &mut Verdict) {
    let deleter: HashMap<(String, String, u64), &str> = audit
        .iter()
        .filter(|r| r.is_pod_delete() && r.succeeded())
        .filter_map(|r| {
            Some((
                (r.namespace.clone(), r.name.clone(), r.response_rv?),
                r.user.as_str(),
            ))
        })
        .collect();
    // A namespace being deleted: its controller deletes the pods as a
    // collection, a request that names no pod.
    let collection_deleter: HashMap<&str, &str> = audit
        .iter()
        .filter(|r| {
            r.verb == "deletecollection"
                && r.resource == "pods"
                && r.subresource.is_empty()
                && r.succeeded()
        })
        .map(|r| (r.namespace.as_str(), r.user.as_str()))
        .collect();
    // Evictions the API server admitted, per pod name: it checked the budget
    // itself. The replay normally sees that as the budget's disruptedPods
    // entry, but a watch that relisted (the API gone for a while) can miss
    // the entry's short life; each admitted eviction then stands for one
    // deletion of that pod that no delete request explains.
    let mut admitted_evictions: HashMap<(String, String), usize> = HashMap::new();
    for record in audit.iter().filter(|r| r.is_eviction() && r.succeeded()) {
        *admitted_evictions
            .entry((record.namespace.clone(), record.name.clone()))
            .or_default() += 1;
    }
    let mut ordered: Vec<&Change> = changes.iter().collect();
    ordered.sort_by_key(|c| c.rv);
    let mut pods: HashMap<String, Pod> = HashMap::new();
    let mut budgets: BTreeMap<String, Budget> = BTreeMap::new();
    for change in ordered {
        match &change.object {
            Object::Pdb(pdb) => {
                let key = key_of(&pdb.metadata);
                if change.deleted {
                    budgets.remove(&key);
                } else {
                    let allowance = pdb
                        .status
                        .as_ref()
                        .map_or(0, |s| i64::from(s.disruptions_allowed));
                    budgets.insert(
                        key,
                        Budget {
                            pdb: (**pdb).clone(),
                            allowance,
                        },
                    );
                }
            }
            Object::Pod(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let before = pods.get(&uid).is_some_and(healthy);
                let disrupted = change.deleted || pod.metadata.deletion_timestamp.is_some();
                if change.deleted {
                    pods.remove(&uid);
                } else {
                    pods.insert(uid, (**pod).clone());
                }
                if !(before && disrupted) {
                    continue;
                }
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let requested = deleter.contains_key(&(namespace.clone(), name.clone(), change.rv))
                    || collection_deleter.contains_key(namespace.as_str());
                let evicted = !requested
                    && admitted_evictions
                        .get_mut(&(namespace.clone(), name.clone()))
                        .is_some_and(|left| {
                            let had = *left > 0;
                            *left = left.saturating_sub(1);
                            had
                        });
                for (key, budget) in budgets.iter_mut() {
                    if !covers(&budget.pdb, pod) {
                        continue;
                    }
                    let admitted = budget
                        .pdb
                        .status
                        .as_ref()
                        .and_then(|s| s.disrupted_pods.as_ref())
                        .is_some_and(|d| d.contains_key(&name));
                    if admitted || evicted {
                        continue;
                    }
                    let allowed = budget.allowance > 0;
                    budget.allowance -= 1;
                    if allowed {
                        continue;
                    }
                    let by = deleter
                        .get(&(namespace.clone(), name.clone(), change.rv))
                        .or_else(|| collection_deleter.get(namespace.as_str()))
                        .map_or_else(|| "an unknown client".to_string(), |u| u.to_string());
                    let disruption = Disruption {
                        pod: format!("{namespace}/{name}"),
                        pdb: key.clone(),
                        by: by.clone(),
                        rv: change.rv,
                    };
                    if is_cluster_controller(&by) {
                        verdict.controller_disruptions.push(disruption);
                    } else {
                        verdict.unbudgeted_disruptions.push(disruption);
                    }
                }
            }
        }
    }
}

fn judge_deletes(
    changes: &[Change],
    audit: &[AuditRecord],
    coordinator: &str,
    verdict: &mut Verdict,
) {
    // Every pod and budget ever seen: a delete of a pod that any budget
    // ever covered counts (the judge errs toward counting).
    let mut pods: HashMap<(String, String), &Pod> = HashMap::new();
    let mut pdbs: Vec<&PodDisruptionBudget> = Vec::new();
    for change in changes {
        match &change.object {
            Object::Pod(pod) => {
                pods.insert(
                    (
                        pod.metadata.namespace.clone().unwrap_or_default(),
                        pod.metadata.name.clone().unwrap_or_default(),
                    ),
                    pod,
                );
            }
            Object::Pdb(pdb) => pdbs.push(pdb),
        }
    }
    for record in audit
        .iter()
        .filter(|r| r.is_pod_delete() && r.user == coordinator)
    {
        let covered = match pods.get(&(record.namespace.clone(), record.name.clone())) {
            Some(pod) => pdbs.iter().any(|pdb| covers(pdb, pod)),
            // A pod never seen: count it, it cannot be shown harmless.
            None => true,
        };
        if covered {
            verdict.coordinator_deletes.push(format!(
                "{}/{} -> {}",
                record.namespace, record.name, record.code
            ));
        }
    }
}

fn judge_cordons(audit: &[AuditRecord], coordinator: &str, verdict: &mut Verdict) {
    let mut writes: Vec<&AuditRecord> = audit
        .iter()
        .filter(|r| {
            r.resource == "nodes"
                && r.subresource.is_empty()
                && matches!(r.verb.as_str(), "create" | "update" | "patch")
                && r.succeeded()
                && r.response_rv.is_some()
        })
        .collect();
    writes.sort_by_key(|r| r.response_rv);
    // node -> (unschedulable, who set it)
    let mut nodes: BTreeMap<&str, (bool, &str)> = BTreeMap::new();
    for write in writes {
        let after = write.unschedulable_after.unwrap_or(false);
        let (before, by) = nodes
            .get(write.name.as_str())
            .copied()
            .unwrap_or((false, ""));
        match (before, after) {
            (false, true) => {
                nodes.insert(&write.name, (true, &write.user));
            }
            (true, false) => {
                if write.user == coordinator && by != coordinator {
                    verdict.foreign_uncordons.push(format!(
                        "{}: cordoned by {}, uncordoned by the coordinator",
                        write.name,
                        if by.is_empty() { "its creator" } else { by }
                    ));
                }
                nodes.insert(&write.name, (false, &write.user));
            }
            _ => {}
        }
    }
    verdict.cordons_left = nodes
        .into_iter()
        .filter(|(_, (cordoned, by))| *cordoned && *by == coordinator)
        .map(|(node, _)| node.to_string())
        .collect();
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Counted healthy by a budget: Ready, running, not terminating.
fn healthy(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The budget's selector matches the pod, in the budget's namespace.
fn covers(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    if pdb.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let empty = BTreeMap::new();
    selects(selector, pod.metadata.labels.as_ref().unwrap_or(&empty))
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match (e.operator.as_str(), labels.get(&e.key)) {
            ("In", Some(v)) => values.contains(v),
            ("In", None) => false,
            ("NotIn", Some(v)) => !values.contains(v),
            ("NotIn", None) => true,
            ("Exists", found) => found.is_some(),
            ("DoesNotExist", found) => found.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COORDINATOR: &str = "k3sfleet-coordinator";

    fn pod(name: &str, uid: &str, ready: bool, terminating: bool) -> Object {
        let mut value = json!({
            "metadata": {"namespace": "shop", "name": name, "uid": uid, "labels": {"app": "web"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if terminating {
            value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Object::Pod(Box::new(serde_json::from_value(value).unwrap()))
    }

    fn pdb(allowed: i32, disrupted: &[&str]) -> Object {
        let disrupted: serde_json::Map<String, serde_json::Value> = disrupted
            .iter()
            .map(|p| (p.to_string(), json!("2026-01-01T00:00:00Z")))
            .collect();
        Object::Pdb(Box::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 2},
                "status": {"disruptionsAllowed": allowed, "currentHealthy": 3, "desiredHealthy": 2,
                           "expectedPods": 3, "disruptedPods": disrupted},
            }))
            .unwrap(),
        ))
    }

    fn at(rv: u64, object: Object) -> Change {
        Change {
            rv,
            object,
            deleted: false,
        }
    }

    fn gone(rv: u64, object: Object) -> Change {
        Change {
            rv,
            object,
            deleted: true,
        }
    }

    fn delete(user: &str, name: &str, rv: u64) -> AuditRecord {
        AuditRecord {
            user: user.into(),
            verb: "delete".into(),
            resource: "pods".into(),
            namespace: "shop".into(),
            name: name.into(),
            code: 200,
            response_rv: Some(rv),
            ..Default::default()
        }
    }

    fn node_write(user: &str, node: &str, rv: u64, unschedulable: bool) -> AuditRecord {
        AuditRecord {
            user: user.into(),
            verb: "patch".into(),
            resource: "nodes".into(),
            name: node.into(),
            code: 200,
            response_rv: Some(rv),
            unschedulable_after: Some(unschedulable),
            ..Default::default()
        }
    }

    fn three_healthy() -> Vec<Change> {
        vec![
            at(1, pod("web-a", "a", true, false)),
            at(2, pod("web-b", "b", true, false)),
            at(3, pod("web-c", "c", true, false)),
            at(4, pdb(1, &[])),
        ]
    }

    #[test]
    fn an_admitted_eviction_is_no_violation_even_when_it_takes_the_last_allowance() {
        let mut changes = three_healthy();
        // The Eviction API records the pod and spends the allowance first.
        changes.push(at(5, pdb(0, &["web-a"])));
        changes.push(at(6, pod("web-a", "a", true, true)));
        changes.push(gone(7, pod("web-a", "a", true, true)));
        let verdict = judge(&changes, &[], COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
    }

    #[test]
    fn a_delete_while_the_budget_allows_none_is_a_violation_named_with_its_author() {
        let mut changes = three_healthy();
        changes.push(at(5, pdb(0, &[])));
        changes.push(at(6, pod("web-b", "b", true, true)));
        let audit = [delete("lab-operator", "web-b", 6)];
        let verdict = judge(&changes, &audit, COORDINATOR);
        assert_eq!(verdict.counts(), (1, 0, 0), "{verdict}");
        assert_eq!(verdict.unbudgeted_disruptions[0].by, "lab-operator");
        assert_eq!(verdict.unbudgeted_disruptions[0].pdb, "shop/web");
    }

    fn eviction(user: &str, name: &str) -> AuditRecord {
        AuditRecord {
            user: user.into(),
            verb: "create".into(),
            resource: "pods".into(),
            subresource: "eviction".into(),
            namespace: "shop".into(),
            name: name.into(),
            code: 201,
            ..Default::default()
        }
    }

    #[test]
    fn an_admitted_eviction_stands_for_one_deletion_the_replay_cannot_explain() {
        // The budget's disruptedPods entry came and went while the watch
        // relisted: the replay saw the pod go with the budget at 0.
        let mut changes = three_healthy();
        changes.push(at(5, pdb(0, &[])));
        changes.push(at(6, pod("web-b", "b", true, true)));
        let audit = [eviction(COORDINATOR, "web-b")];
        assert!(judge(&changes, &audit, COORDINATOR).is_clean());
        // One eviction explains one deletion, not a later one of the name.
        changes.push(at(7, pod("web-b", "b2", true, false)));
        changes.push(at(8, pod("web-b", "b2", true, true)));
        assert_eq!(judge(&changes, &audit, COORDINATOR).counts().0, 1);
        // A refused eviction explains nothing.
        let refused = [AuditRecord {
            code: 429,
            ..eviction(COORDINATOR, "web-b")
        }];
        assert_eq!(judge(&changes[..6], &refused, COORDINATOR).counts().0, 1);
    }

    #[test]
    fn two_deletes_against_an_allowance_of_one_count_the_second() {
        // The budget's status has not caught up between the two deletes.
        let mut changes = three_healthy();
        changes.push(at(5, pod("web-a", "a", true, true)));
        changes.push(gone(6, pod("web-b", "b", true, false)));
        let verdict = judge(&changes, &[], COORDINATOR);
        assert_eq!(verdict.counts().0, 1, "{verdict}");
        assert_eq!(verdict.unbudgeted_disruptions[0].pod, "shop/web-b");
        assert_eq!(verdict.unbudgeted_disruptions[0].by, "an unknown client");
    }

    #[test]
    fn unready_pods_and_uncovered_pods_are_not_judged() {
        let mut changes = three_healthy();
        changes.push(at(5, pdb(0, &[])));
        changes.push(at(6, pod("web-a", "a", false, false)));
        changes.push(at(7, pod("web-a", "a", false, true)));
        let mut other = pod("api-1", "x", true, false);
        if let Object::Pod(p) = &mut other {
            p.metadata.labels = Some(BTreeMap::from([("app".into(), "api".into())]));
        }
        changes.push(at(8, other.clone()));
        changes.push(gone(9, other));
        let verdict = judge(&changes, &[], COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
    }

    #[test]
    fn the_workloads_own_controllers_are_counted_apart() {
        let mut changes = three_healthy();
        changes.push(at(5, pdb(0, &[])));
        changes.push(at(6, pod("web-c", "c", true, true)));
        let audit = [delete(
            "system:serviceaccount:kube-system:replicaset-controller",
            "web-c",
            6,
        )];
        let verdict = judge(&changes, &audit, COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
        assert_eq!(verdict.controller_disruptions.len(), 1);
    }

    #[test]
    fn a_namespace_deleted_with_its_pods_is_its_controllers_doing() {
        let mut changes = three_healthy();
        changes.push(at(5, pdb(0, &[])));
        changes.push(at(6, pod("web-c", "c", true, true)));
        let audit = [AuditRecord {
            user: "system:serviceaccount:kube-system:namespace-controller".into(),
            verb: "deletecollection".into(),
            resource: "pods".into(),
            namespace: "shop".into(),
            code: 200,
            ..Default::default()
        }];
        let verdict = judge(&changes, &audit, COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
        assert_eq!(verdict.controller_disruptions.len(), 1);
    }

    #[test]
    fn changes_are_judged_in_resource_version_order_not_arrival_order() {
        // The pod watch delivered the deletion before the budget watch
        // delivered the eviction's status update: order by rv fixes it.
        let mut changes = three_healthy();
        changes.push(at(6, pod("web-a", "a", true, true)));
        changes.push(at(5, pdb(0, &["web-a"])));
        let verdict = judge(&changes, &[], COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
    }

    #[test]
    fn a_coordinator_delete_of_a_covered_pod_counts_whatever_the_answer() {
        let changes = three_healthy();
        let mut refused = delete(COORDINATOR, "web-a", 0);
        refused.code = 403;
        refused.response_rv = None;
        let mut uncovered = delete(COORDINATOR, "debug", 0);
        uncovered.namespace = "shop".into();
        let mut changes_with_debug = changes.clone();
        let mut debug = pod("debug", "d", true, false);
        if let Object::Pod(p) = &mut debug {
            p.metadata.labels = None;
        }
        changes_with_debug.push(at(9, debug));
        let verdict = judge(
            &changes_with_debug,
            &[refused, uncovered, delete("lab-operator", "web-b", 0)],
            COORDINATOR,
        );
        assert_eq!(verdict.coordinator_deletes, ["shop/web-a -> 403"]);
        assert_eq!(verdict.counts().1, 1);
    }

    #[test]
    fn a_cordon_left_behind_and_an_operators_cordon_lifted_are_both_counted() {
        let audit = [
            node_write(COORDINATOR, "worker-1", 10, true),
            node_write("lab-operator", "worker-2", 11, true),
            node_write(COORDINATOR, "worker-2", 12, true),
            node_write(COORDINATOR, "worker-2", 13, false),
        ];
        let verdict = judge(&[], &audit, COORDINATOR);
        assert_eq!(verdict.cordons_left, ["worker-1"]);
        assert_eq!(
            verdict.foreign_uncordons,
            ["worker-2: cordoned by lab-operator, uncordoned by the coordinator"]
        );
        assert_eq!(verdict.counts().2, 2);
    }

    #[test]
    fn the_coordinators_own_cordon_lifted_and_an_operators_cordon_kept_are_clean() {
        let audit = [
            node_write(COORDINATOR, "worker-1", 13, false),
            node_write(COORDINATOR, "worker-1", 10, true),
            node_write("lab-operator", "worker-2", 11, true),
        ];
        let verdict = judge(&[], &audit, COORDINATOR);
        assert!(verdict.is_clean(), "{verdict}");
    }

    #[test]
    fn evictions_are_counted_per_user_and_answer() {
        let eviction = |user: &str, code| AuditRecord {
            user: user.into(),
            verb: "create".into(),
            resource: "pods".into(),
            subresource: "eviction".into(),
            code,
            ..Default::default()
        };
        let audit = [
            eviction(COORDINATOR, 429),
            eviction(COORDINATOR, 429),
            eviction(COORDINATOR, 201),
            eviction("lab-operator", 429),
        ];
        let verdict = judge(&[], &audit, COORDINATOR);
        assert_eq!(verdict.evictions_by(COORDINATOR, 429), 2);
        assert_eq!(verdict.evictions_by(COORDINATOR, 201), 1);
        assert_eq!(verdict.evictions_by("lab-operator", 429), 1);
    }

    #[test]
    fn selectors_follow_label_selector_rules() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let selector =
            |value: serde_json::Value| -> LabelSelector { serde_json::from_value(value).unwrap() };
        assert!(selects(&selector(json!({})), &labels));
        assert!(selects(
            &selector(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]})
            ),
            &labels
        ));
        assert!(!selects(
            &selector(json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})),
            &labels
        ));
        assert!(!selects(
            &selector(json!({"matchLabels": {"app": "api"}})),
            &labels
        ));
    }
}
