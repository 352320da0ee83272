//! Draining end to end: the `k3sfleet` CLI, a real coordinator process with a
//! `[kubernetes]` section, and kubesim serving the cluster from this test
//! process. Progress lines, exit statuses, the node's cordon, the audit log.

use std::path::Path;
use std::process::Output;

use k3sfleet_kubesim::{KubeSim, Running, Scenario};
use k3sfleet_pki::Role;
use k3sfleet_tests::{Cli, CoordinatorProcess, TestPki};

struct Cluster {
    _dir: tempfile::TempDir,
    sim: Running,
    _coordinator: CoordinatorProcess,
    cli: Cli,
    /// Serves the simulator while the test thread runs processes.
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// kubesim with `scenario`, and a coordinator: with a kubeconfig for it
    /// when `kubernetes`, else without the section.
    fn start(scenario: Scenario, kubernetes: bool) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = runtime
            .block_on(KubeSim::start(&scenario, "127.0.0.1:0"))
            .expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::create(&dir.path().join("pki"));
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let extra = if kubernetes {
            format!("[kubernetes]\nkubeconfig = \"{}\"\n", kubeconfig.display())
        } else {
            String::new()
        };
        let coordinator = CoordinatorProcess::start(dir.path(), &pki, &extra);
        let cli = Cli::new(&pki, coordinator.addr, pki.issue(Role::Admin, "alice"));
        Cluster {
            _dir: dir,
            sim,
            _coordinator: coordinator,
            cli,
            runtime,
        }
    }

    fn unschedulable(&self, node: &str) -> bool {
        self.sim.inspect(|c| {
            c.nodes
                .get("", node)
                .and_then(|n| n.spec.as_ref().and_then(|s| s.unschedulable))
                .unwrap_or(false)
        })
    }

    fn pods_on(&self, node: &str) -> Vec<String> {
        self.sim.inspect(|c| {
            c.pods
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect()
        })
    }

    /// (actor, action, detail) of the node's audit entries, oldest first.
    fn audit(&self, node: &str) -> Vec<(String, String, String)> {
        let text = self.cli.ok(&["audit", "--node", node, "-o", "json"]);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut entries: Vec<(String, String, String)> = value["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (field("actor"), field("action"), field("detail"))
            })
            .collect();
        entries.reverse();
        entries
    }

    fn shutdown(self) {
        let Cluster { sim, runtime, .. } = self;
        runtime.block_on(sim.shutdown());
    }
}

fn scenario_file(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kubesim/scenarios")
        .join(name);
    Scenario::from_file(&path).unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn drain_shows_each_pod_waits_out_the_budget_and_is_audited() {
    let cluster = Cluster::start(scenario_file("drain-blocked.toml"), true);
    let output = cluster.cli.run(&[
        "drain",
        "worker-1",
        "--delete-emptydir-data",
        "--timeout",
        "2m",
    ]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "node/worker-1 cordoned", "{stdout}");
    assert!(
        lines[1].starts_with("plan for worker-1: evict "),
        "{stdout}"
    );
    assert!(
        stdout.contains("  skip   kube-system/node-agent-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  PDB shop/web blocks now (4 healthy, needs 3, allows 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("\nevicting shop/web-"), "{stdout}");
    // One refusal at least; how many depends on how fast the replacement
    // becomes Ready (repeated ones add "for 2s, 3 attempts").
    let blocked: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("blocked  shop/web-"))
        .collect();
    assert!(!blocked.is_empty(), "no blocked line:\n{stdout}");
    for line in &blocked {
        assert!(line.contains(" by PDB shop/web (3/3 healthy)"), "{line}");
    }
    assert!(stdout.contains("\ngone     shop/web-"), "{stdout}");
    assert!(stdout.contains("\nDRAINED: drained worker-1: "), "{stdout}");
    assert!(stdout.contains("\nwaited: "), "{stdout}");
    assert!(cluster.unschedulable("worker-1"));
    let left = cluster.pods_on("worker-1");
    assert!(
        left.iter().all(|p| p.starts_with("node-agent-")),
        "{left:?}"
    );
    assert_eq!(cluster.sim.stats().pdb_violations, 0);

    assert_eq!(
        cluster.cli.ok(&["uncordon", "worker-1"]),
        "node/worker-1 uncordoned\n"
    );
    assert!(!cluster.unschedulable("worker-1"));
    assert_eq!(
        cluster.cli.ok(&["uncordon", "worker-1"]),
        "node/worker-1 was already schedulable\n"
    );

    let audit = cluster.audit("worker-1");
    let actions: Vec<&str> = audit.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "drain.started",
            "drain.finished",
            "node.uncordoned",
            "node.uncordoned"
        ]
    );
    assert!(
        audit.iter().all(|(actor, _, _)| actor == "admin:alice"),
        "{audit:?}"
    );
    assert!(
        audit[0].2.contains("timeout 2m0s") && audit[0].2.contains("delete-emptydir-data"),
        "{audit:?}"
    );
    assert!(
        audit[1].2.starts_with("DRAINED: drained worker-1"),
        "{audit:?}"
    );
    cluster.shutdown();
}

const NEVER_RECOVERS: &str = r#"
    [[nodes]]
    name = "worker-1"
    labels = { pool = "a" }
    [[nodes]]
    name = "worker-2"
    labels = { pool = "a" }
    [[deployments]]
    namespace = "shop"
    name = "web"
    replicas = 4
    node_selector = { pool = "a" }
    [[pdbs]]
    namespace = "shop"
    name = "web"
    selector = { app = "web" }
    min_available = 4
"#;

#[test]
fn a_dry_run_changes_nothing_and_a_timed_out_drain_exits_2() {
    let scenario = Scenario::from_toml(NEVER_RECOVERS, "never recovers").unwrap();
    let cluster = Cluster::start(scenario, true);

    let stdout = cluster.cli.ok(&["drain", "worker-1", "--dry-run"]);
    assert!(
        stdout.starts_with("plan for worker-1: evict 2, skip 0, refuse 0\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  PDB shop/web will never allow it (4 healthy, needs 4, allows 0): shop/web-"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "PDB shop/web wants 4 of its 4 pods healthy, so it never allows a disruption"
        ),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("DRY_RUN: would evict 2, skip 0, refuse 0; blocked now by shop/web\n"),
        "{stdout}"
    );
    assert!(!cluster.unschedulable("worker-1"));
    assert_eq!(cluster.sim.stats().evictions_refused_total(), 0);

    let output = cluster.cli.run(&[
        "drain",
        "worker-1",
        "--timeout",
        "3s",
        "--on-timeout",
        "uncordon",
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\nTIMED_OUT: blocked by PDB shop/web for "),
        "{stdout}"
    );
    assert!(stdout.contains("(4/4 healthy)"), "{stdout}");
    assert!(stdout.contains("; uncordoned\n"), "{stdout}");
    assert!(
        !cluster.unschedulable("worker-1"),
        "the drain cordoned it, so it uncordons it"
    );

    let audit = cluster.audit("worker-1");
    let actions: Vec<&str> = audit.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["drain.dry_run", "drain.started", "drain.finished"]
    );
    assert!(
        audit[2].2.starts_with("TIMED_OUT: blocked by PDB shop/web"),
        "{audit:?}"
    );
    assert_eq!(cluster.sim.stats().pdb_violations, 0);
    cluster.shutdown();
}

#[test]
fn without_kubernetes_access_the_drain_names_the_missing_key() {
    let scenario = Scenario::from_toml(NEVER_RECOVERS, "never recovers").unwrap();
    let cluster = Cluster::start(scenario, false);
    for args in [&["drain", "worker-1"][..], &["uncordon", "worker-1"]] {
        let output = cluster.cli.run(args);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("kubernetes.kubeconfig") && stderr.contains("FailedPrecondition"),
            "{args:?}: {stderr}"
        );
    }
    assert!(cluster.audit("worker-1").is_empty());
    cluster.shutdown();
}
