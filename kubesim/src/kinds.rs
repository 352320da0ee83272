//! The resource kinds the simulator serves and what the API layer needs to know about each:
//! scope, names, selectable fields, validation and where its store lives.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::Cluster;
use crate::error::Cause;
use crate::store::Store;

pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + std::fmt::Debug
    + crate::api::table::TableRow
    + 'static
{
    const NAMESPACED: bool;
    const SINGULAR: &'static str;
    const SHORT_NAMES: &'static [&'static str];
    /// `all` for kinds `kubectl get all` shows.
    const CATEGORIES: &'static [&'static str];
    /// Fields selectable besides `metadata.name` and `metadata.namespace`.
    const EXTRA_FIELDS: &'static [&'static str] = &[];
    /// Whether the kind has a `/status` subresource whose content the main resource ignores.
    const HAS_STATUS: bool = true;

    fn store(cluster: &Cluster) -> &Store<Self>;
    fn store_mut(cluster: &mut Cluster) -> &mut Store<Self>;

    /// Value of an `EXTRA_FIELDS` field ("" when unset).
    fn extra_field(&self, _field: &str) -> String {
        String::new()
    }

    /// Fills in server-side defaults of a newly created object.
    fn apply_defaults(&mut self) {}

    /// Called after an API client changed an object (update or patch), with the state before.
    fn after_api_update(
        _cluster: &mut Cluster,
        _before: &Self,
        _after: &Self,
        _now: &crate::time::Now,
    ) {
    }

    /// Called after an API client created (`None`) or updated an object.
    fn after_api_write(
        _cluster: &mut Cluster,
        _obj: &Self,
        _subresource: Option<crate::cluster::objects::Subresource>,
        _now: &crate::time::Now,
    ) {
    }

    /// Kind-specific validation of a created or updated object.
    fn validate(&self) -> Vec<Cause> {
        Vec::new()
    }

    /// The value of a selectable field.
    fn field(&self, field: &str) -> String {
        let meta = self.metadata();
        match field {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            other => self.extra_field(other),
        }
    }

    fn selectable_fields() -> Vec<&'static str> {
        let mut fields = vec!["metadata.name", "metadata.namespace"];
        fields.extend_from_slice(Self::EXTRA_FIELDS);
        fields
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: message.into(),
        field: Some(field.into()),
    }
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: Some(field.into()),
    }
}

macro_rules! store_access {
    ($field:ident) => {
        fn store(cluster: &Cluster) -> &Store<Self> {
            &cluster.$field
        }
        fn store_mut(cluster: &mut Cluster) -> &mut Store<Self> {
            &mut cluster.$field
        }
    };
}

impl Kind for Node {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "node";
    const SHORT_NAMES: &'static [&'static str] = &["no"];
    const CATEGORIES: &'static [&'static str] = &[];
    const EXTRA_FIELDS: &'static [&'static str] = &["spec.unschedulable"];
    store_access!(nodes);

    fn after_api_write(
        cluster: &mut Cluster,
        node: &Self,
        subresource: Option<crate::cluster::objects::Subresource>,
        now: &crate::time::Now,
    ) {
        use crate::cluster::objects::Subresource;
        // A kubelet registering (create) or reporting status is a heartbeat.
        if matches!(subresource, None | Some(Subresource::Status)) {
            cluster
                .sim
                .kubelet_heartbeat(node.metadata.name.as_deref().unwrap_or_default(), now);
        }
    }

    fn extra_field(&self, field: &str) -> String {
        match field {
            "spec.unschedulable" => self
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
                .to_string(),
            _ => String::new(),
        }
    }
}

impl Kind for Pod {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "pod";
    const SHORT_NAMES: &'static [&'static str] = &["po"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const EXTRA_FIELDS: &'static [&'static str] = &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "status.phase",
        "status.podIP",
    ];
    store_access!(pods);

    fn extra_field(&self, field: &str) -> String {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let value = match field {
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.restartPolicy" => spec.and_then(|s| s.restart_policy.clone()),
            "spec.schedulerName" => spec.and_then(|s| s.scheduler_name.clone()),
            "status.phase" => status.and_then(|s| s.phase.clone()),
            "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
            _ => None,
        };
        value.unwrap_or_default()
    }

    fn apply_defaults(&mut self) {
        crate::cluster::pods::apply_pod_defaults(self);
    }

    fn after_api_update(
        cluster: &mut Cluster,
        before: &Self,
        after: &Self,
        now: &crate::time::Now,
    ) {
        // A client turning a healthy pod unhealthy disrupts it as much as deleting it.
        if crate::cluster::pods::counts_as_healthy(before)
            && !crate::cluster::pods::counts_as_healthy(after)
        {
            cluster.record_disruption(before, "status update", now);
        }
    }

    fn validate(&self) -> Vec<Cause> {
        match &self.spec {
            None => vec![required("spec")],
            Some(spec) if spec.containers.is_empty() => vec![required("spec.containers")],
            Some(_) => Vec::new(),
        }
    }
}

impl Kind for Namespace {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "namespace";
    const SHORT_NAMES: &'static [&'static str] = &["ns"];
    const CATEGORIES: &'static [&'static str] = &[];
    const EXTRA_FIELDS: &'static [&'static str] = &["status.phase"];
    store_access!(namespaces);

    fn extra_field(&self, field: &str) -> String {
        match field {
            "status.phase" => self
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
}

impl Kind for PodDisruptionBudget {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "poddisruptionbudget";
    const SHORT_NAMES: &'static [&'static str] = &["pdb"];
    const CATEGORIES: &'static [&'static str] = &[];
    store_access!(pdbs);

    fn validate(&self) -> Vec<Cause> {
        let Some(spec) = &self.spec else {
            return vec![required("spec")];
        };
        let mut causes = Vec::new();
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            causes.push(invalid(
                "spec",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        for (field, value) in [
            ("spec.minAvailable", &spec.min_available),
            ("spec.maxUnavailable", &spec.max_unavailable),
        ] {
            if let Some(value) = value
                && crate::controllers::pdb::parse_int_or_percent(value).is_none()
            {
                causes.push(invalid(
                    field,
                    "must be a non-negative integer or a percentage between 0% and 100%",
                ));
            }
        }
        if let Some(policy) = &spec.unhealthy_pod_eviction_policy
            && !matches!(policy.as_str(), "IfHealthyBudget" | "AlwaysAllow")
        {
            causes.push(invalid(
                "spec.unhealthyPodEvictionPolicy",
                format!("Unsupported value: {policy:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""),
            ));
        }
        causes
    }
}

impl Kind for Deployment {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "deployment";
    const SHORT_NAMES: &'static [&'static str] = &["deploy"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    store_access!(deployments);
}

impl Kind for ReplicaSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "replicaset";
    const SHORT_NAMES: &'static [&'static str] = &["rs"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    store_access!(replicasets);
}

impl Kind for StatefulSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "statefulset";
    const SHORT_NAMES: &'static [&'static str] = &["sts"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    store_access!(statefulsets);
}

impl Kind for DaemonSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "daemonset";
    const SHORT_NAMES: &'static [&'static str] = &["ds"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    store_access!(daemonsets);
}
