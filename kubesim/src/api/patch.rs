//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch
//! (Kubernetes' own, what kubectl and kubelets send). Server-side apply is not served.

use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

const ACCEPTED: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            _ => Err(ApiError::unsupported_media_type(content_type, ACCEPTED)),
        }
    }
}

/// Applies `patch` to `doc`.
pub fn apply(doc: &mut Value, patch_type: PatchType, body: &[u8]) -> Result<(), ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding json patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| {
                ApiError::invalid_patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(doc, &patch, "");
            Ok(())
        }
    }
}

/// The merge key of lists with `patchStrategy: merge` in the served types, by field path.
fn merge_key(path: &str) -> Option<&'static str> {
    Some(match path {
        "status.conditions" | "status.addresses" => "type",
        "spec.containers"
        | "spec.initContainers"
        | "spec.volumes"
        | "spec.template.spec.containers"
        | "spec.template.spec.volumes"
        | "status.volumesAttached" => "name",
        "metadata.ownerReferences" => "uid",
        _ => return None,
    })
}

/// Lists merged as sets of primitives.
fn is_primitive_set(path: &str) -> bool {
    path == "metadata.finalizers"
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge: maps merge recursively, `null` deletes, lists with a merge key merge by
/// it (`$patch: delete` removes an element), other lists are replaced; `$setElementOrder` and
/// `$retainKeys` directives are accepted and ignored, `$patch: replace` replaces a map,
/// `$deleteFromPrimitiveList/<field>` removes values.
pub fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch_map) = patch else {
        *doc = strip_directives(patch);
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *doc = strip_directives(patch);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(doc_map) = doc else { return };
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(remove)) =
                (doc_map.get_mut(field), value)
            {
                items.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let child_path = join(path, key);
        match value {
            Value::Null => {
                doc_map.remove(key);
            }
            Value::Object(_) => {
                let slot = doc_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value, &child_path);
            }
            Value::Array(items) => {
                let existing = doc_map.get_mut(key);
                match (existing, merge_key(&child_path)) {
                    (Some(Value::Array(current)), Some(merge_key)) => {
                        merge_list(current, items, merge_key, &child_path)
                    }
                    (Some(Value::Array(current)), None) if is_primitive_set(&child_path) => {
                        for item in items {
                            if !current.contains(item) {
                                current.push(item.clone());
                            }
                        }
                    }
                    _ => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(strip_directives)
                            .collect();
                        doc_map.insert(key.clone(), Value::Array(cleaned));
                    }
                }
            }
            other => {
                doc_map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn merge_list(current: &mut Vec<Value>, patch: &[Value], merge_key: &str, path: &str) {
    for item in patch {
        let key = item.get(merge_key).cloned();
        let position = key
            .as_ref()
            .and_then(|k| current.iter().position(|c| c.get(merge_key) == Some(k)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut current[i], item, path),
            (None, false) => current.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        let mut doc = doc;
        apply(&mut doc, PatchType::Strategic, patch.to_string().as_bytes()).unwrap();
        doc
    }

    #[test]
    fn cordon_and_uncordon() {
        let node = json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.42.0.0/24"}});
        let cordoned = smp(node, json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            cordoned["spec"],
            json!({"podCIDR": "10.42.0.0/24", "unschedulable": true})
        );
        let uncordoned = smp(cordoned, json!({"spec": {"unschedulable": null}}));
        assert_eq!(uncordoned["spec"], json!({"podCIDR": "10.42.0.0/24"}));
    }

    #[test]
    fn kubelet_status_patch_merges_conditions_by_type() {
        let node = json!({"status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
            ],
            "nodeInfo": {"kubeletVersion": "v1.32.1+k3s1", "osImage": "Debian"}
        }});
        let patched = smp(
            node,
            json!({"status": {
                "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": "v1.33.5+k3s1"}
            }}),
        );
        assert_eq!(
            patched["status"]["conditions"][0],
            json!({"type": "MemoryPressure", "status": "False"})
        );
        assert_eq!(
            patched["status"]["conditions"][1],
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady"})
        );
        assert_eq!(
            patched["status"]["nodeInfo"],
            json!({"kubeletVersion": "v1.33.5+k3s1", "osImage": "Debian"})
        );
    }

    #[test]
    fn delete_directive_and_replaced_lists() {
        let doc = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}]}, "spec": {"taints": [{"key": "x"}]}});
        let patched = smp(
            doc,
            json!({
                "status": {"conditions": [{"type": "A", "$patch": "delete"}]},
                "spec": {"taints": [{"key": "y", "effect": "NoSchedule"}]}
            }),
        );
        assert_eq!(patched["status"]["conditions"], json!([{"type": "B"}]));
        assert_eq!(
            patched["spec"]["taints"],
            json!([{"key": "y", "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let mut doc = json!({"spec": {"unschedulable": true, "podCIDR": "x"}});
        apply(
            &mut doc,
            PatchType::Merge,
            br#"{"spec":{"unschedulable":null}}"#,
        )
        .unwrap();
        assert_eq!(doc, json!({"spec": {"podCIDR": "x"}}));
        apply(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"add","path":"/spec/unschedulable","value":true}]"#,
        )
        .unwrap();
        assert_eq!(doc["spec"]["unschedulable"], true);
        let err = apply(
            &mut doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/spec/podCIDR","value":"y"}]"#,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json").unwrap(),
            PatchType::Strategic
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml")
                .unwrap_err()
                .code,
            415
        );
    }
}
