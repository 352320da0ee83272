//! The kube-apiserver audit log (`--audit-log-format=json`: one
//! `audit.k8s.io/v1` Event per line) and the policy the real tier runs with.

use std::path::Path;

use serde::Deserialize;

use super::judge::AuditRecord;

/// Every request is recorded once it has been answered (Metadata level:
/// who, what, the answer); node writes and pod deletes also with their
/// request and response bodies, which is where the judge reads who set
/// `spec.unschedulable` and which pod version a DELETE hit. Leases (every
/// kubelet's heartbeat, every leader election) would drown the rest.
pub const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources:
  - group: coordination.k8s.io
    resources: [leases]
- level: RequestResponse
  verbs: [create, update, patch]
  resources:
  - group: \"\"
    resources: [nodes]
- level: RequestResponse
  verbs: [delete]
  resources:
  - group: \"\"
    resources: [pods]
- level: Metadata
";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(default)]
    stage: String,
    #[serde(default)]
    verb: String,
    #[serde(default)]
    user: User,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default)]
    response_object: Option<serde_json::Value>,
    #[serde(default)]
    stage_timestamp: String,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

/// The records of one audit log line, if it is a finished request on an object.
pub fn parse_line(line: &str) -> Option<AuditRecord> {
    let event: Event = serde_json::from_str(line).ok()?;
    if event.stage != "ResponseComplete" {
        return None;
    }
    let object = event.object_ref?;
    let response = event.response_object.as_ref();
    let response_rv = response
        .and_then(|r| r["metadata"]["resourceVersion"].as_str())
        .and_then(|rv| rv.parse().ok());
    let unschedulable_after = (object.resource == "nodes")
        .then(|| response.and_then(|r| r["kind"].as_str().map(|kind| (kind, r))))
        .flatten()
        .filter(|(kind, _)| *kind == "Node")
        .map(|(_, r)| r["spec"]["unschedulable"].as_bool().unwrap_or(false));
    Some(AuditRecord {
        user: event.user.username,
        verb: event.verb,
        resource: object.resource,
        subresource: object.subresource,
        namespace: object.namespace,
        name: object.name,
        code: event.response_status.map_or(0, |s| s.code),
        response_rv,
        unschedulable_after,
        time: event.stage_timestamp,
    })
}

/// Every record in the audit logs at `paths` (missing files are empty).
pub fn read_all(paths: &[std::path::PathBuf]) -> Vec<AuditRecord> {
    paths.iter().flat_map(|path| read(path)).collect()
}

fn read(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cordon_is_read_with_its_author_and_the_nodes_version() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/nodes/worker-01","verb":"patch","user":{"username":"k3sfleet-coordinator","groups":["system:authenticated"]},"objectRef":{"resource":"nodes","name":"worker-01","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestObject":{"spec":{"unschedulable":true}},"responseObject":{"kind":"Node","apiVersion":"v1","metadata":{"name":"worker-01","resourceVersion":"4711"},"spec":{"unschedulable":true}},"stageTimestamp":"2026-01-01T00:00:00.000000Z"}"#;
        let record = parse_line(line).unwrap();
        assert_eq!(record.user, "k3sfleet-coordinator");
        assert_eq!(record.response_rv, Some(4711));
        assert_eq!(record.unschedulable_after, Some(true));
        assert_eq!(record.code, 200);
    }

    #[test]
    fn an_eviction_refused_by_a_budget_is_read() {
        let line = r#"{"kind":"Event","stage":"ResponseComplete","verb":"create","user":{"username":"lab-operator"},"objectRef":{"resource":"pods","namespace":"shop","name":"web-1","subresource":"eviction"},"responseStatus":{"code":429}}"#;
        let record = parse_line(line).unwrap();
        assert!(record.is_eviction());
        assert_eq!((record.code, record.unschedulable_after), (429, None));
        assert!(parse_line("not json").is_none());
        assert!(parse_line(&line.replace("ResponseComplete", "Panic")).is_none());
    }
}
