//! Field ownership (`metadata.managedFields`), as the API server records it
//! for Update operations (create, PUT, PATCH): the manager of a write owns
//! every field it set or changed, other managers lose those fields, and a
//! field removed is owned by nobody. Clients such as k3sfleet read it to tell
//! who set a field (for example who cordoned a node: `f:spec.f:unschedulable`).
//!
//! Kept simple where clients do not look: lists count as one field (the real
//! server tracks their items by key), and every entry's time is the write's.
//! The manager is the request's `fieldManager`, else the User-Agent's product
//! name (`kubectl/v1.35.0 (linux/amd64)` -> `kubectl`), as the real server
//! derives it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use serde_json::{Map, Value};

/// A field's path, e.g. ["spec", "unschedulable"].
type Path = Vec<String>;

/// The parts of an object whose fields are tracked, per subresource.
const MAIN: [&str; 2] = ["metadata", "spec"];
const STATUS: [&str; 1] = ["status"];
/// Server-owned metadata nobody "manages".
const SERVER_METADATA: [&str; 9] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "name",
    "namespace",
];

/// The manager of a request: its `fieldManager`, else its User-Agent's product.
pub fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(manager) = field_manager.filter(|m| !m.is_empty()) {
        return manager.to_string();
    }
    user_agent
        .and_then(|agent| agent.split(['/', ' ']).next())
        .filter(|product| !product.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// The managedFields after `manager` wrote `new` over `old` (both as JSON
/// objects), through the main resource or `/status`.
pub fn after_write(
    entries: &[ManagedFieldsEntry],
    old: &Value,
    new: &Value,
    manager: &str,
    status: bool,
    api_version: &str,
    time: Time,
) -> Vec<ManagedFieldsEntry> {
    let subresource = if status { "status" } else { "" };
    let roots: &[&str] = if status { &STATUS } else { &MAIN };
    let before = leaves(old, roots);
    let after = leaves(new, roots);
    let changed: BTreeSet<&Path> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(*value))
        .map(|(path, _)| path)
        .collect();
    let removed: BTreeSet<&Path> = before.keys().filter(|p| !after.contains_key(*p)).collect();

    let mut owned: BTreeMap<(String, String), (BTreeSet<Path>, Option<Time>)> = BTreeMap::new();
    for entry in entries {
        let key = (
            entry.manager.clone().unwrap_or_default(),
            entry.subresource.clone().unwrap_or_default(),
        );
        let paths = entry
            .fields_v1
            .as_ref()
            .map(|f| paths_of(&f.0))
            .unwrap_or_default();
        owned.insert(key, (paths, entry.time.clone()));
    }
    for (key, (paths, _)) in owned.iter_mut() {
        if key.1 == subresource {
            paths.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
    }
    if !changed.is_empty() {
        let mine = owned
            .entry((manager.to_string(), subresource.to_string()))
            .or_default();
        mine.0.extend(changed.into_iter().cloned());
        mine.1 = Some(time.clone());
    }
    owned
        .into_iter()
        .filter(|(_, (paths, _))| !paths.is_empty())
        .map(|((manager, subresource), (paths, at))| ManagedFieldsEntry {
            manager: Some(manager),
            operation: Some("Update".into()),
            api_version: Some(api_version.to_string()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields_of(&paths))),
            subresource: (!subresource.is_empty()).then_some(subresource),
            time: at,
        })
        .collect()
}

/// Every leaf of the tracked parts: objects are walked, anything else
/// (scalars, lists) is a leaf.
fn leaves<'a>(object: &'a Value, roots: &[&str]) -> BTreeMap<Path, &'a Value> {
    fn walk<'a>(value: &'a Value, path: &mut Path, out: &mut BTreeMap<Path, &'a Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Null => {}
            leaf => {
                out.insert(path.clone(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    for root in roots {
        let Some(part) = object.get(*root) else {
            continue;
        };
        let mut path = vec![root.to_string()];
        match part {
            Value::Object(map) if *root == "metadata" => {
                for (key, child) in map {
                    if SERVER_METADATA.contains(&key.as_str()) {
                        continue;
                    }
                    path.push(key.clone());
                    walk(child, &mut path, &mut out);
                    path.pop();
                }
            }
            part => walk(part, &mut path, &mut out),
        }
    }
    out
}

/// FieldsV1 JSON (`{"f:spec":{"f:unschedulable":{}}}`) for these paths.
fn fields_of(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

/// The paths a FieldsV1 value names.
fn paths_of(fields: &Value) -> BTreeSet<Path> {
    fn walk(value: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(map) = value.as_object() else {
            return;
        };
        if map.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (key, child) in map {
            let Some(name) = key.strip_prefix("f:") else {
                continue;
            };
            path.push(name.to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn time() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }

    fn owner_of(entries: &[ManagedFieldsEntry], field: &[&str]) -> Vec<String> {
        let path: Path = field.iter().map(|s| s.to_string()).collect();
        entries
            .iter()
            .filter(|e| paths_of(&e.fields_v1.as_ref().unwrap().0).contains(&path))
            .map(|e| e.manager.clone().unwrap())
            .collect()
    }

    #[test]
    fn the_last_writer_of_a_field_owns_it_and_a_removed_field_has_no_owner() {
        let plain = json!({"metadata": {"name": "n1", "labels": {"a": "1"}}, "spec": {}});
        let cordoned = json!({"metadata": {"name": "n1", "labels": {"a": "1"},
            "annotations": {"k3sfleet.io/cordoned-by": "x"}}, "spec": {"unschedulable": true}});
        let entries = after_write(&[], &Value::Null, &plain, "kubelet", false, "v1", time());
        assert_eq!(
            owner_of(&entries, &["metadata", "labels", "a"]),
            ["kubelet"]
        );

        let entries = after_write(&entries, &plain, &cordoned, "k3sfleet", false, "v1", time());
        assert_eq!(owner_of(&entries, &["spec", "unschedulable"]), ["k3sfleet"]);
        assert_eq!(
            owner_of(&entries, &["metadata", "labels", "a"]),
            ["kubelet"]
        );

        // kubectl uncordon removes the field; kubectl cordon sets it again.
        let mut uncordoned = cordoned.clone();
        uncordoned["spec"] = json!({});
        let entries = after_write(
            &entries,
            &cordoned,
            &uncordoned,
            "kubectl-uncordon",
            false,
            "v1",
            time(),
        );
        assert!(owner_of(&entries, &["spec", "unschedulable"]).is_empty());
        let entries = after_write(
            &entries,
            &uncordoned,
            &cordoned,
            "kubectl-cordon",
            false,
            "v1",
            time(),
        );
        assert_eq!(
            owner_of(&entries, &["spec", "unschedulable"]),
            ["kubectl-cordon"]
        );
        assert_eq!(
            owner_of(
                &entries,
                &["metadata", "annotations", "k3sfleet.io/cordoned-by"]
            ),
            ["k3sfleet"],
            "the annotation did not change: still k3sfleet's"
        );
    }

    #[test]
    fn status_writes_are_tracked_apart_and_managers_come_from_the_request() {
        let old = json!({"status": {"phase": "Pending"}});
        let new = json!({"status": {"phase": "Running"}});
        let entries = after_write(&[], &old, &new, "kubelet", true, "v1", time());
        assert_eq!(entries[0].subresource.as_deref(), Some("status"));
        assert_eq!(
            manager_of(Some("k3sfleet"), Some("kubectl/v1.35")),
            "k3sfleet"
        );
        assert_eq!(
            manager_of(None, Some("kubectl/v1.35.0 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_of(Some(""), None), "unknown");
    }
}
