//! The simulated Longhorn for a cluster kubesim does not hold: the real control-plane tier.
//! Each [`Mirror::step`] is given what that cluster's API server holds now, runs the same
//! controller ([`super::sync`]) on a copy of it, and hands back what the controller changed as
//! [`Change`]s for the caller to send. One set of rules for both tiers, so they cannot drift
//! apart; only the API server's answers differ, and on the real tier those are real.
//!
//! What the controller remembers between runs (when a rebuild finishes, since when a replica
//! is failed) stays in the mirror; everything else is reloaded from the API server each time,
//! so a change made by someone else (the coordinator asking a node to evict its replicas, an
//! eviction taking an instance manager) is seen as it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use super::{
    LonghornNode, NAMESPACE, Replica, Setting, Volume, instance_manager_name,
    instance_manager_running, is_longhorn_node, is_unschedulable,
};
use crate::cluster::{Cluster, Stats};
use crate::error::ApiError;
use crate::kinds::Kind;
use crate::scenario::Scenario;
use crate::scenario::build::cluster_config;
use crate::store::Store;
use crate::time::Now;

/// What the API server holds, as the controller reads it.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub nodes: Vec<Node>,
    /// Every pod: instance managers, and volumes' consumers.
    pub pods: Vec<Pod>,
    /// The budgets in `longhorn-system`.
    pub pdbs: Vec<PodDisruptionBudget>,
    pub volumes: Vec<Volume>,
    pub replicas: Vec<Replica>,
    pub longhorn_nodes: Vec<LonghornNode>,
    pub settings: Vec<Setting>,
}

/// Which resource a [`Change`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRef {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Whether its status is written through the `/status` subresource.
    pub has_status: bool,
}

impl ResourceRef {
    fn of<K: Kind>() -> ResourceRef {
        ResourceRef {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            has_status: K::HAS_STATUS,
        }
    }
}

/// One write the controller made, for the caller to make on its API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create `object` (client-settable metadata only); then, when `status` is given, write
    /// it through the status subresource (a create ignores status there).
    Create {
        resource: ResourceRef,
        object: Value,
        status: Option<Value>,
    },
    /// JSON merge patches: `main` of the object's other top-level fields, `status` of its
    /// status subresource.
    Patch {
        resource: ResourceRef,
        namespace: String,
        name: String,
        main: Option<Value>,
        status: Option<Value>,
    },
    Delete {
        resource: ResourceRef,
        namespace: String,
        name: String,
    },
}

/// The simulated Longhorn's controller, run on copies of another cluster's state.
#[derive(Debug)]
pub struct Mirror {
    cluster: Cluster,
    /// Every Longhorn node's instance manager has run with its budget at least once: until
    /// then, as while kubesim builds a scenario, replicas do not fail for want of one.
    settled: bool,
}

impl Mirror {
    /// The simulated Longhorn of `scenario` (`None` without a `[longhorn]` section), with the
    /// objects it starts with for the caller to create: settings, volumes, healthy replicas.
    pub fn install(
        scenario: &Scenario,
        now: &Now,
    ) -> Result<Option<(Mirror, Vec<Change>)>, ApiError> {
        let Some(section) = &scenario.longhorn else {
            return Ok(None);
        };
        let mut cluster = Cluster::new(cluster_config(scenario), scenario.cluster.seed);
        cluster.sim.bootstrapping = true;
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        cluster.create(namespace, now)?;
        super::install(&mut cluster, scenario, section, now)?;
        let mut initial = Vec::new();
        initial.extend(creates(&cluster.longhorn.settings));
        initial.extend(creates(&cluster.longhorn.volumes));
        initial.extend(creates(&cluster.longhorn.replicas));
        let mirror = Mirror {
            cluster,
            settled: false,
        };
        Ok(Some((mirror, initial)))
    }

    /// Runs the controller once on `observed`; returns what it changed.
    pub fn step(&mut self, observed: Observed, now: &Now) -> Vec<Change> {
        self.load(observed);
        if !self.settled {
            self.settled = self.every_instance_manager_serves();
            self.cluster.sim.bootstrapping = !self.settled;
        }
        let before = self.owned();
        super::sync(&mut self.cluster, now);
        diff(&before, &self.owned())
    }

    /// Whether every Longhorn node's instance manager has run with its budget.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// What the controller judged: violations, each volume's fewest healthy replicas, rebuilds.
    pub fn stats(&self) -> &Stats {
        self.cluster.stats()
    }

    fn load(&mut self, observed: Observed) {
        let cluster = &mut self.cluster;
        cluster.nodes = filled(observed.nodes);
        cluster.pods = filled(observed.pods);
        cluster.pdbs = filled(observed.pdbs);
        cluster.longhorn.volumes = filled(observed.volumes);
        cluster.longhorn.replicas = filled(observed.replicas);
        cluster.longhorn.nodes = filled(observed.longhorn_nodes);
        cluster.longhorn.settings = filled(observed.settings);
    }

    fn every_instance_manager_serves(&self) -> bool {
        let Some(config) = &self.cluster.config.longhorn else {
            return true;
        };
        let mut nodes = self
            .cluster
            .nodes
            .iter()
            .filter(|n| is_longhorn_node(config, n) && !is_unschedulable(n))
            .filter_map(|n| n.metadata.name.as_deref())
            .peekable();
        nodes.peek().is_some()
            && nodes.all(|node| {
                instance_manager_running(&self.cluster, node)
                    && self
                        .cluster
                        .pdbs
                        .get(NAMESPACE, &instance_manager_name(node))
                        .is_some()
            })
    }

    /// The objects the controller writes, as JSON without their resourceVersion.
    fn owned(&self) -> Owned {
        let cluster = &self.cluster;
        let mut owned = Owned::new();
        snapshot(&mut owned, cluster.pods.in_namespace(NAMESPACE));
        snapshot(&mut owned, cluster.pdbs.in_namespace(NAMESPACE));
        snapshot(&mut owned, cluster.longhorn.volumes.iter());
        snapshot(&mut owned, cluster.longhorn.replicas.iter());
        snapshot(&mut owned, cluster.longhorn.nodes.iter());
        owned
    }
}

/// A store holding `objects` (the resourceVersions are the copy's own).
fn filled<K: Kind>(objects: Vec<K>) -> Store<K> {
    let mut store = Store::with_history(1);
    for (rv, object) in (1..).zip(objects) {
        store.put(object, rv);
    }
    store
}

type Owned = BTreeMap<(&'static str, String, String), (ResourceRef, Value)>;

fn snapshot<'a, K: Kind>(owned: &mut Owned, objects: impl Iterator<Item = &'a Arc<K>>) {
    for object in objects {
        let meta = object.metadata();
        let key = (
            K::URL_PATH_SEGMENT,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let mut value = serde_json::to_value(&**object).unwrap_or_default();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        owned.insert(key, (ResourceRef::of::<K>(), value));
    }
}

fn creates<K: Kind>(store: &Store<K>) -> Vec<Change> {
    let mut owned = Owned::new();
    snapshot(&mut owned, store.iter());
    owned
        .into_values()
        .map(|(resource, value)| create(resource, value))
        .collect()
}

/// A create of `value`, with only the metadata a client may set.
fn create(resource: ResourceRef, mut value: Value) -> Change {
    let mut status = None;
    if let Some(object) = value.as_object_mut() {
        if let Some(Value::Object(meta)) = object.get_mut("metadata") {
            meta.retain(|key, _| {
                matches!(
                    key.as_str(),
                    "name" | "namespace" | "labels" | "annotations" | "ownerReferences"
                )
            });
        }
        if resource.has_status {
            status = object.remove("status");
        }
    }
    Change::Create {
        resource,
        object: value,
        status,
    }
}

fn diff(before: &Owned, after: &Owned) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, (resource, _)) in before {
        if !after.contains_key(key) {
            changes.push(Change::Delete {
                resource: *resource,
                namespace: key.1.clone(),
                name: key.2.clone(),
            });
        }
    }
    for (key, (resource, new)) in after {
        match before.get(key) {
            None => changes.push(create(*resource, new.clone())),
            Some((_, old)) if old != new => {
                let (main, status) = patches(old, new, resource.has_status);
                if main.is_some() || status.is_some() {
                    changes.push(Change::Patch {
                        resource: *resource,
                        namespace: key.1.clone(),
                        name: key.2.clone(),
                        main,
                        status,
                    });
                }
            }
            Some(_) => {}
        }
    }
    changes
}

/// Merge patches taking `old` to `new`: every top-level field (metadata aside) that changed,
/// whole, and the status (its own patch where it is a subresource). The controller only
/// ever sets fields, never removes one.
fn patches(old: &Value, new: &Value, has_status: bool) -> (Option<Value>, Option<Value>) {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut main = Map::new();
    let mut status = None;
    for (field, value) in new {
        if matches!(field.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if old.get(field) == Some(value) {
            continue;
        }
        if field == "status" && has_status {
            status = Some(serde_json::json!({ "status": value }));
        } else {
            main.insert(field.clone(), value.clone());
        }
    }
    ((!main.is_empty()).then_some(Value::Object(main)), status)
}

#[cfg(test)]
mod tests;
