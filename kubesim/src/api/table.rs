//! `meta.k8s.io/v1` Table responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`),
//! with the columns the real API server prints for each kind.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::cluster::pods::{is_ready, is_terminating};
use crate::kinds::Kind;

/// A column: name, type, and priority (0 = always shown, 1 = only with `-o wide`).
pub struct Column(pub &'static str, pub &'static str, pub u8);

pub trait TableRow {
    fn columns() -> Vec<Column>;
    fn cells(&self, now: Timestamp) -> Vec<Value>;
}

const NAME: Column = Column("Name", "string", 0);
const AGE: Column = Column("Age", "string", 0);

/// Whether the Accept header asks for a Table (any version of meta.k8s.io Table).
pub fn wants_table(accept: &str) -> Option<&'static str> {
    accept.split(',').find_map(|part| {
        let part = part.replace(' ', "");
        if !part.contains("as=Table") {
            return None;
        }
        if part.contains("v=v1beta1") {
            Some("meta.k8s.io/v1beta1")
        } else {
            Some("meta.k8s.io/v1")
        }
    })
}

/// Builds a Table; `include_object` is the request's includeObject (None, Metadata, Object),
/// `served_as` the apiVersion full objects are rendered in.
pub fn table<K: Kind>(
    objects: &[&K],
    table_version: &str,
    resource_version: u64,
    include_object: &str,
    served_as: &str,
    now: Timestamp,
) -> Value {
    let columns: Vec<Value> = K::columns()
        .iter()
        .map(|Column(name, kind, priority)| {
            json!({
                "name": name,
                "type": kind,
                "format": if *name == "Name" { "name" } else { "" },
                "description": description(name),
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({ "cells": obj.cells(now) });
            match include_object {
                "None" => {}
                "Object" => row["object"] = super::wire(*obj, served_as),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": table_version,
                        "metadata": serde_json::to_value(obj.metadata()).unwrap_or_default(),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": table_version,
        "metadata": { "resourceVersion": resource_version.to_string() },
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn description(column: &str) -> &'static str {
    match column {
        "Name" => {
            "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated."
        }
        "Age" => {
            "CreationTimestamp is a timestamp representing the server time when this object was created."
        }
        _ => "",
    }
}

/// Ages as kubectl prints them (apimachinery duration.HumanDuration).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    if s < 60 * 2 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 60 * 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let days = d % 365;
        if days == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{days}d")
        }
    } else {
        format!("{y}y")
    }
}

fn age(meta: &ObjectMeta, now: Timestamp) -> Value {
    match &meta.creation_timestamp {
        Some(Time(created)) => json!(human_duration(now.as_second() - created.as_second())),
        None => json!("<unknown>"),
    }
}

fn name(meta: &ObjectMeta) -> Value {
    json!(meta.name.clone().unwrap_or_default())
}

fn or_none(value: Option<String>) -> Value {
    json!(
        value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "<none>".into())
    )
}

impl TableRow for Node {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Status", "string", 0),
            Column("Roles", "string", 0),
            AGE,
            Column("Version", "string", 0),
            Column("Internal-IP", "string", 1),
            Column("External-IP", "string", 1),
            Column("OS-Image", "string", 1),
            Column("Kernel-Version", "string", 1),
            Column("Container-Runtime", "string", 1),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str());
        let mut state = match ready {
            Some("True") => "Ready".to_string(),
            Some("False") => "NotReady".into(),
            _ => "Unknown".into(),
        };
        if self
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            state.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<String> = self
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .or_else(|| (k == "kubernetes.io/role").then(|| v.clone()))
            })
            .collect();
        roles.sort();
        let address = |kind: &str| {
            status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == kind)
                .map(|a| a.address.clone())
        };
        let info = status.node_info.clone().unwrap_or_default();
        vec![
            name(&self.metadata),
            json!(state),
            or_none((!roles.is_empty()).then(|| roles.join(","))),
            age(&self.metadata, now),
            json!(info.kubelet_version),
            or_none(address("InternalIP")),
            or_none(address("ExternalIP")),
            json!(info.os_image),
            json!(info.kernel_version),
            json!(info.container_runtime_version),
        ]
    }
}

/// The STATUS column of `kubectl get pods` (a simplified printPod).
fn pod_reason(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut reason = status
        .reason
        .clone()
        .unwrap_or_else(|| status.phase.clone().unwrap_or_else(|| "Pending".into()));
    for cs in status.container_statuses.iter().flatten() {
        if let Some(state) = &cs.state {
            if let Some(waiting) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
                reason = waiting;
            } else if let Some(terminated) = &state.terminated {
                reason = terminated
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", terminated.exit_code));
            }
        }
    }
    if reason == "Running"
        && !is_ready(pod)
        && status
            .container_statuses
            .iter()
            .flatten()
            .any(|c| c.restart_count > 0)
    {
        reason = "CrashLoopBackOff".into();
    }
    if is_terminating(pod) {
        reason = "Terminating".into();
    }
    reason
}

impl TableRow for Pod {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Ready", "string", 0),
            Column("Status", "string", 0),
            Column("Restarts", "string", 0),
            AGE,
            Column("IP", "string", 1),
            Column("Node", "string", 1),
            Column("Nominated Node", "string", 1),
            Column("Readiness Gates", "string", 1),
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let total = self.spec.as_ref().map_or(0, |s| s.containers.len());
        let ready = status
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.ready)
            .count();
        let restarts: i32 = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        vec![
            name(&self.metadata),
            json!(format!("{ready}/{total}")),
            json!(pod_reason(self)),
            json!(restarts.to_string()),
            age(&self.metadata, now),
            or_none(status.pod_ip.clone()),
            or_none(self.spec.as_ref().and_then(|s| s.node_name.clone())),
            or_none(status.nominated_node_name.clone()),
            json!("<none>"),
        ]
    }
}

impl TableRow for Namespace {
    fn columns() -> Vec<Column> {
        vec![NAME, Column("Status", "string", 0), AGE]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        vec![name(&self.metadata), json!(phase), age(&self.metadata, now)]
    }
}

fn int_or_string(value: Option<&IntOrString>) -> Value {
    match value {
        Some(IntOrString::Int(n)) => json!(n.to_string()),
        Some(IntOrString::String(s)) => json!(s),
        None => json!("N/A"),
    }
}

impl TableRow for PodDisruptionBudget {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Min Available", "string", 0),
            Column("Max Unavailable", "string", 0),
            Column("Allowed Disruptions", "integer", 0),
            AGE,
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        vec![
            name(&self.metadata),
            int_or_string(spec.min_available.as_ref()),
            int_or_string(spec.max_unavailable.as_ref()),
            json!(self.status.as_ref().map_or(0, |s| s.disruptions_allowed)),
            age(&self.metadata, now),
        ]
    }
}

impl TableRow for Deployment {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Ready", "string", 0),
            Column("Up-to-date", "integer", 0),
            Column("Available", "integer", 0),
            AGE,
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        let desired = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        vec![
            name(&self.metadata),
            json!(format!("{}/{desired}", s.ready_replicas.unwrap_or(0))),
            json!(s.updated_replicas.unwrap_or(0)),
            json!(s.available_replicas.unwrap_or(0)),
            age(&self.metadata, now),
        ]
    }
}

impl TableRow for ReplicaSet {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Desired", "integer", 0),
            Column("Current", "integer", 0),
            Column("Ready", "integer", 0),
            AGE,
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        vec![
            name(&self.metadata),
            json!(self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)),
            json!(s.replicas),
            json!(s.ready_replicas.unwrap_or(0)),
            age(&self.metadata, now),
        ]
    }
}

impl TableRow for StatefulSet {
    fn columns() -> Vec<Column> {
        vec![NAME, Column("Ready", "string", 0), AGE]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        let desired = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        vec![
            name(&self.metadata),
            json!(format!("{}/{desired}", s.ready_replicas.unwrap_or(0))),
            age(&self.metadata, now),
        ]
    }
}

impl TableRow for DaemonSet {
    fn columns() -> Vec<Column> {
        vec![
            NAME,
            Column("Desired", "integer", 0),
            Column("Current", "integer", 0),
            Column("Ready", "integer", 0),
            Column("Up-to-date", "integer", 0),
            Column("Available", "integer", 0),
            Column("Node Selector", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let s = self.status.clone().unwrap_or_default();
        let selector = self
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.node_selector.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        vec![
            name(&self.metadata),
            json!(s.desired_number_scheduled),
            json!(s.current_number_scheduled),
            json!(s.number_ready),
            json!(s.updated_number_scheduled.unwrap_or(0)),
            json!(s.number_available.unwrap_or(0)),
            or_none(selector),
            age(&self.metadata, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn accept_header_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(wants_table(kubectl), Some("meta.k8s.io/v1"));
        assert_eq!(
            wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("meta.k8s.io/v1beta1")
        );
        assert_eq!(wants_table("application/json"), None);
    }
}
