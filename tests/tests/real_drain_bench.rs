//! `k3sfleet drain` beside `kubectl drain` (1.20 and current) on the same
//! node of the same real cluster, one after the other, each on a fresh copy
//! of the same workload: figures, not a timed assertion. Prints each tool's
//! wall time and the API server's answers to its evictions (the 429s are the
//! budget's refusals) from the audit log; asserts only that each drain
//! finished and that no budget was broken (the auditor's verdict).
//!
//! Needs root and scripts/build-testbed.sh (and kubectl 1.20 from
//! scripts/fetch-test-tools.sh for its row); recorded as skipped otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k3sfleet_sim::lab::real::{COORDINATOR_USER, OPERATOR_USER};
use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_tests::real::{apply, assert_audit_clean, kubectl_ok, real_lab, real_lab_dir, wait};
use k3sfleet_tests::rollout::cli;

const CLUSTER: &str = r#"
[cluster]
time_scale = 1.0
[[nodes]]
name = "server-1"
role = "server"
[[nodes]]
name = "server-2"
role = "server"
[[nodes]]
name = "server-3"
role = "server"
[[nodes]]
name = "worker-1"
labels = { pool = "a" }
[[nodes]]
name = "worker-2"
labels = { pool = "a" }
"#;

/// Three web pods behind a budget allowing one disruption, one database
/// pod behind minAvailable 1 and two unguarded api pods on worker-1 (and
/// as many on worker-2); replacements are Ready 2 s after scheduling.
fn workload(namespace: &str) -> String {
    let spread = |app: &str| {
        format!(
            "      nodeSelector: {{pool: a}}\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        whenUnsatisfiable: DoNotSchedule\n        nodeTaintsPolicy: Honor\n        labelSelector:\n          matchLabels: {{app: {app}}}\n"
        )
    };
    let template = |app: &str| {
        format!(
            "  template:\n    metadata:\n      labels: {{app: {app}}}\n      annotations:\n        pod-ready.stage.kwok.x-k8s.io/delay: 2s\n        pod-delete.stage.kwok.x-k8s.io/delay: 500ms\n    spec:\n{}      containers:\n      - name: {app}\n        image: registry.k8s.io/pause:3.10\n",
            spread(app)
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {namespace}\nspec:\n  replicas: 6\n  selector:\n    matchLabels: {{app: web}}\n{web}---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: {namespace}\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: api}}\n{api}---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {namespace}\nspec:\n  replicas: 2\n  serviceName: db\n  podManagementPolicy: Parallel\n  selector:\n    matchLabels: {{app: db}}\n{db}---\n\
         apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\n  namespace: {namespace}\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels: {{app: web}}\n---\n\
         apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: db\n  namespace: {namespace}\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels: {{app: db}}\n",
        web = template("web"),
        api = template("api"),
        db = template("db"),
    )
}

/// Every pod of `namespace` Ready, six of them on worker-1, budgets counted.
fn settled(lab: &Lab, namespace: &str) -> bool {
    let pods = tokio::task::block_in_place(|| lab.pods());
    let ours: Vec<_> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .collect();
    let ready = ours
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    let on_node = ours
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("worker-1"))
        .count();
    let allowed = kubectl_ok(
        lab,
        &[
            "get",
            "pdb",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].status.disruptionsAllowed}",
        ],
    );
    ready == 12
        && on_node == 6
        && allowed.split_whitespace().count() == 2
        && allowed.split_whitespace().all(|n| n == "1")
}

struct Row {
    tool: String,
    seconds: f64,
    answers: BTreeMap<u16, usize>,
}

fn answers(lab: &Lab, namespace: &str, user: &str) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for record in tokio::task::block_in_place(|| lab.real().auditor().audit_records())
        .iter()
        .filter(|r| r.is_eviction() && r.namespace == namespace && r.user == user)
    {
        *counts.entry(record.code).or_insert(0) += 1;
    }
    counts
}

fn kubectl_version(kubectl: &PathBuf) -> String {
    let output = std::process::Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    let version: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3sfleet_drain_and_kubectl_drain_side_by_side_on_the_same_real_node() {
    let dir = real_lab_dir();
    let Some(lab) = real_lab(&dir, LabSpec::new(CLUSTER, "real_drain_bench").unwrap()).await else {
        return;
    };
    let testbed = lab.real().testbed.clone();
    let mut tools: Vec<(String, Option<PathBuf>)> = vec![("k3sfleet drain".into(), None)];
    match &testbed.kubectl_1_20 {
        Some(old) => tools.push((
            format!("kubectl {} drain", kubectl_version(old)),
            Some(old.clone()),
        )),
        None => eprintln!("no kubectl 1.20 (scripts/fetch-test-tools.sh): its row is left out"),
    }
    tools.push((
        format!("kubectl {} drain", kubectl_version(&testbed.kubectl)),
        Some(testbed.kubectl.clone()),
    ));

    let mut rows = Vec::new();
    for (index, (tool, kubectl)) in tools.iter().enumerate() {
        let namespace = format!("bench-{index}");
        apply(&lab, &workload(&namespace));
        wait(
            &format!("{namespace} to settle"),
            Duration::from_secs(120),
            || settled(&lab, &namespace),
        );
        let started = Instant::now();
        let user = match kubectl {
            None => {
                cli(&lab, &["drain", "worker-1", "--timeout", "5m"]);
                COORDINATOR_USER
            }
            Some(kubectl) => {
                let output = tokio::task::block_in_place(|| {
                    std::process::Command::new(kubectl)
                        .env("KUBECONFIG", &lab.real().operator_kubeconfig)
                        .args([
                            "drain",
                            "worker-1",
                            "--ignore-daemonsets",
                            "--delete-emptydir-data",
                            "--timeout=5m",
                        ])
                        .output()
                })
                .unwrap();
                assert!(
                    output.status.success(),
                    "{tool}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                OPERATOR_USER
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let left = tokio::task::block_in_place(|| lab.pods())
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("worker-1"))
            .count();
        assert_eq!(left, 0, "{tool} left pods on worker-1");
        rows.push(Row {
            tool: tool.clone(),
            seconds,
            answers: answers(&lab, &namespace, user),
        });
        match kubectl {
            None => {
                cli(&lab, &["uncordon", "worker-1"]);
            }
            Some(_) => {
                kubectl_ok(&lab, &["uncordon", "worker-1"]);
            }
        }
        kubectl_ok(&lab, &["delete", "namespace", &namespace, "--wait=true"]);
    }

    assert_audit_clean(&lab);
    println!(
        "\nDraining worker-1 of the same real cluster (3 web pods behind maxUnavailable 1, \
         1 StatefulSet pod behind minAvailable 1, 2 unguarded pods; replacements Ready 2 s after scheduling):"
    );
    println!(
        "{:<28} {:>8} {:>10} {:>6}",
        "tool", "time", "evictions", "429s"
    );
    for row in &rows {
        println!(
            "{:<28} {:>7.1}s {:>10} {:>6}",
            row.tool,
            row.seconds,
            row.answers.values().sum::<usize>(),
            row.answers.get(&429).copied().unwrap_or(0)
        );
    }
    lab.shutdown().await;
}
