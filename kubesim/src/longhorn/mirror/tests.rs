use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodCondition, PodStatus};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;

const SCENARIO: &str = r#"
[[nodes]]
name = "server-1"
role = "server"

[[nodes]]
name = "worker-01"
labels = { "longhorn" = "yes" }

[[nodes]]
name = "worker-02"
labels = { "longhorn" = "yes" }

[[nodes]]
name = "worker-03"
labels = { "longhorn" = "yes" }

[longhorn]
node_selector = { "longhorn" = "yes" }

[[longhorn.volumes]]
name = "pvc-a"
replicas = 2
nodes = ["worker-01", "worker-02"]
"#;

fn scenario() -> Scenario {
    Scenario::from_toml(SCENARIO, "mirror test").unwrap()
}

fn node(name: &str, longhorn: bool) -> Node {
    let labels = if longhorn {
        BTreeMap::from([("longhorn".to_string(), "yes".to_string())])
    } else {
        BTreeMap::new()
    };
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn nodes() -> Vec<Node> {
    vec![
        node("server-1", false),
        node("worker-01", true),
        node("worker-02", true),
        node("worker-03", true),
    ]
}

/// The object a create makes, status included.
fn object_of<K: DeserializeOwned>(change: &Change) -> K {
    let Change::Create { object, status, .. } = change else {
        panic!("not a create: {change:?}");
    };
    let mut object = object.clone();
    if let Some(status) = status {
        object["status"] = status.clone();
    }
    serde_json::from_value(object).unwrap()
}

fn creates_of<'a>(changes: &'a [Change], kind: &str) -> Vec<&'a Change> {
    changes
        .iter()
        .filter(|c| matches!(c, Change::Create { resource, .. } if resource.kind == kind))
        .collect()
}

fn ready(mut pod: Pod) -> Pod {
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pod
}

/// What the API server would hold after the mirror's install.
fn installed() -> (Mirror, Observed) {
    let now = Now::capture();
    let (mirror, initial) = Mirror::install(&scenario(), &now).unwrap().unwrap();
    let observed = Observed {
        nodes: nodes(),
        settings: creates_of(&initial, "Setting")
            .into_iter()
            .map(object_of)
            .collect(),
        volumes: creates_of(&initial, "Volume")
            .into_iter()
            .map(object_of)
            .collect(),
        replicas: creates_of(&initial, "Replica")
            .into_iter()
            .map(object_of)
            .collect(),
        ..Default::default()
    };
    (mirror, observed)
}

#[test]
fn install_hands_over_settings_volumes_and_healthy_replicas_as_a_client_creates_them() {
    let (_, initial) = Mirror::install(&scenario(), &Now::capture())
        .unwrap()
        .unwrap();
    let settings: Vec<Setting> = creates_of(&initial, "Setting")
        .into_iter()
        .map(object_of)
        .collect();
    assert!(
        settings.iter().any(|s| s.name() == "node-drain-policy"
            && s.text("/value") == "block-if-contains-last-replica"),
        "{settings:?}"
    );
    let replicas = creates_of(&initial, "Replica");
    assert_eq!(replicas.len(), 2, "{initial:#?}");
    for change in replicas {
        let Change::Create {
            resource,
            object,
            status,
        } = change
        else {
            unreachable!()
        };
        assert_eq!(resource.group, "longhorn.io");
        assert_eq!(resource.plural, "replicas");
        // The status goes through its subresource; server-owned metadata is not sent.
        assert!(object.get("status").is_none(), "{object:#}");
        assert_eq!(status.as_ref().unwrap()["currentState"], "running");
        let meta = object["metadata"].as_object().unwrap();
        assert!(
            meta.keys().all(|k| k == "name" || k == "namespace"),
            "{meta:?}"
        );
        assert_eq!(meta["namespace"], NAMESPACE);
        assert_ne!(object["spec"]["healthyAt"], "");
    }
    assert!(
        Mirror::install(
            &Scenario::from_toml(
                "[[nodes]]\nname = \"a\"\nrole = \"server\"\n",
                "no longhorn"
            )
            .unwrap(),
            &Now::capture()
        )
        .unwrap()
        .is_none()
    );
}

/// `changes` made on `observed`, as an API server would (merge patches, creates, deletes).
fn apply(observed: &mut Observed, changes: &[Change]) {
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(target), Some(patch)) => {
                for (key, value) in patch {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
            _ => *target = patch.clone(),
        }
    }
    fn apply_to<K: Kind>(objects: &mut Vec<K>, change: &Change) {
        match change {
            Change::Create { .. } => objects.push(object_of(change)),
            Change::Patch {
                name, main, status, ..
            } => {
                for object in objects
                    .iter_mut()
                    .filter(|o| o.metadata().name.as_ref() == Some(name))
                {
                    let mut value = serde_json::to_value(&*object).unwrap();
                    for patch in [main, status].into_iter().flatten() {
                        merge(&mut value, patch);
                    }
                    *object = serde_json::from_value(value).unwrap();
                }
            }
            Change::Delete { name, .. } => {
                objects.retain(|o| o.metadata().name.as_ref() != Some(name));
            }
        }
    }
    for change in changes {
        let (Change::Create { resource, .. }
        | Change::Patch { resource, .. }
        | Change::Delete { resource, .. }) = change;
        match resource.kind {
            "Pod" => apply_to(&mut observed.pods, change),
            "PodDisruptionBudget" => apply_to(&mut observed.pdbs, change),
            "Volume" => apply_to(&mut observed.volumes, change),
            "Replica" => apply_to(&mut observed.replicas, change),
            "Node" => apply_to(&mut observed.longhorn_nodes, change),
            other => panic!("the mirror wrote a {other}"),
        }
    }
}

/// The kubelet's part: every pod Running and Ready.
fn run_pods(observed: &mut Observed) {
    observed.pods = observed.pods.drain(..).map(ready).collect();
}

#[test]
fn the_mirror_starts_instance_managers_then_budgets_and_fails_the_replicas_of_a_manager_gone() {
    let (mut mirror, mut observed) = installed();
    let now = Now::capture();

    // Instance managers on the Longhorn nodes only, named as their budgets will be; a
    // Longhorn Node resource for each.
    let changes = mirror.step(observed.clone(), &now);
    let mut on: Vec<String> = creates_of(&changes, "Pod")
        .into_iter()
        .map(|c| {
            let pod: Pod = object_of(c);
            let node = pod.spec.unwrap().node_name.unwrap();
            assert_eq!(pod.metadata.name.unwrap(), instance_manager_name(&node));
            node
        })
        .collect();
    on.sort();
    assert_eq!(on, ["worker-01", "worker-02", "worker-03"]);
    assert_eq!(creates_of(&changes, "Node").len(), 3, "{changes:#?}");
    assert!(creates_of(&changes, "PodDisruptionBudget").is_empty());
    assert!(!mirror.settled());
    apply(&mut observed, &changes);

    // Their budgets once they run.
    run_pods(&mut observed);
    let changes = mirror.step(observed.clone(), &now);
    assert_eq!(
        creates_of(&changes, "PodDisruptionBudget").len(),
        3,
        "{changes:#?}"
    );
    apply(&mut observed, &changes);

    // Settled: nothing more to do.
    let changes = mirror.step(observed.clone(), &now);
    assert!(mirror.settled());
    assert!(changes.is_empty(), "{changes:#?}");

    // worker-01's instance manager evicted: its replica fails, spec and status.
    let im_01 = instance_manager_name("worker-01");
    observed
        .pods
        .retain(|p| p.metadata.name.as_deref() != Some(im_01.as_str()));
    let changes = mirror.step(observed.clone(), &now);
    let failed: Vec<&Change> = changes
        .iter()
        .filter(|c| matches!(c, Change::Patch { resource, .. } if resource.kind == "Replica"))
        .collect();
    assert_eq!(failed.len(), 1, "{changes:#?}");
    let Change::Patch {
        name, main, status, ..
    } = failed[0]
    else {
        unreachable!()
    };
    let replica = observed.replicas.iter().find(|r| r.name() == name).unwrap();
    assert_eq!(replica.text("/spec/nodeID"), "worker-01");
    assert_ne!(main.as_ref().unwrap()["spec"]["failedAt"], "");
    assert_eq!(
        status.as_ref().unwrap(),
        &json!({"status": {"currentState": "stopped"}})
    );
    apply(&mut observed, &changes);
    assert!(mirror.stats().longhorn_violations.is_empty());
    assert_eq!(
        mirror.stats().longhorn_lowest_healthy.get("pvc-a"),
        Some(&1)
    );

    // And worker-02's too: the volume has no healthy replica left, which is judged.
    let im_02 = instance_manager_name("worker-02");
    observed
        .pods
        .retain(|p| p.metadata.name.as_deref() != Some(im_02.as_str()));
    let changes = mirror.step(observed.clone(), &now);
    apply(&mut observed, &changes);
    let violations = &mirror.stats().longhorn_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].volume, "pvc-a");
    assert_eq!(
        mirror.stats().longhorn_lowest_healthy.get("pvc-a"),
        Some(&0)
    );
    let volume = &observed.volumes[0];
    assert_eq!(volume.text("/status/robustness"), "faulted");
}

#[test]
fn a_status_without_its_own_subresource_is_patched_with_the_rest() {
    let old = json!({"spec": {"a": 1}, "status": {"s": 1}, "value": "x"});
    let new = json!({"spec": {"a": 2}, "status": {"s": 2}, "value": "x"});
    assert_eq!(
        patches(&old, &new, true),
        (
            Some(json!({"spec": {"a": 2}})),
            Some(json!({"status": {"s": 2}}))
        )
    );
    assert_eq!(
        patches(&old, &new, false),
        (Some(json!({"spec": {"a": 2}, "status": {"s": 2}})), None)
    );
    assert_eq!(patches(&old, &old, true), (None, None));
}
