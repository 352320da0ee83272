//! Proof of fidelity: real kubectl binaries (1.20 from Debian, speaking policy/v1beta1, and a
//! current one) against the simulator. Fetch them with `scripts/fetch-test-tools.sh`.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{pods_on, scenario_file, start};
use k3sfleet_kubesim::Running;
use tempfile::TempDir;

/// kubectl waits 5 s between 429s; a drain here needs one or two retries.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
enum Kubectl {
    V1_20,
    Current,
}

impl Kubectl {
    fn path(self) -> PathBuf {
        let (env, dir) = match self {
            Kubectl::V1_20 => ("KUBECTL_1_20", "kubectl-1.20"),
            Kubectl::Current => ("KUBECTL_CURRENT", "kubectl-current"),
        };
        let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
            let tools = std::env::var_os("K3SFLEET_TOOLS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| common::repo_root().join(".cache/tools"));
            tools.join(dir).join("kubectl")
        });
        assert!(
            path.is_file(),
            "{} not found (set {env} or run scripts/fetch-test-tools.sh to fetch it)",
            path.display()
        );
        path
    }
}

/// One kubectl with its own HOME, KUBECONFIG and cache directory.
struct Cli {
    binary: PathBuf,
    home: TempDir,
}

impl Cli {
    fn new(which: Kubectl, sim: &Running) -> Self {
        let home = tempfile::tempdir().expect("temp home");
        sim.write_kubeconfig(&home.path().join("kubeconfig"))
            .expect("kubeconfig");
        Self {
            binary: which.path(),
            home,
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .arg(format!("--cache-dir={}", home.join("cache").display()))
            .env_clear()
            .env("HOME", home)
            .env("KUBECONFIG", home.join("kubeconfig"))
            .env("PATH", "/usr/bin:/bin")
            .kill_on_drop(true);
        tokio::time::timeout(KUBECTL_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {KUBECTL_TIMEOUT:?}"))
            .expect("kubectl runs")
    }

    /// Starts a long-running kubectl (e.g. `get -w`) with stdout piped.
    fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let home = self.home.path();
        tokio::process::Command::new(&self.binary)
            .args(args)
            .arg(format!("--cache-dir={}", home.join("cache").display()))
            .env_clear()
            .env("HOME", home)
            .env("KUBECONFIG", home.join("kubeconfig"))
            .env("PATH", "/usr/bin:/bin")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl starts")
    }

    /// Runs and requires success; returns stdout, and stderr appended for diagnostics.
    async fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        (stdout, stderr)
    }
}

fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

async fn get_and_cordon(which: Kubectl) {
    let sim = start(&scenario_file("demo.toml")).await;
    let cli = Cli::new(which, &sim);

    let (nodes, stderr) = cli.ok(&["get", "nodes"]).await;
    assert_eq!(
        header(&nodes),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "{nodes}"
    );
    assert_eq!(nodes.lines().count(), 1 + 18, "{nodes}");
    let server = row(&nodes, "server-1");
    assert_eq!((server[1], server[4]), ("Ready", "v1.33.5+k3s1"));
    assert!(
        server[2].contains("control-plane") && server[2].contains("etcd"),
        "{nodes}"
    );
    assert!(
        !stderr.to_lowercase().contains("error"),
        "kubectl complained: {stderr}"
    );

    let (pods, _) = cli.ok(&["get", "pods", "-A"]).await;
    assert_eq!(
        header(&pods),
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    let pod_count = sim.inspect(|c| c.pods.len());
    assert_eq!(pods.lines().count(), 1 + pod_count, "{pods}");
    assert_eq!(row(&pods, "billing").len(), 6);
    let completed = pods
        .lines()
        .find(|l| l.contains("migrate-2024-11"))
        .expect("finished pod listed");
    assert!(completed.contains("Completed"), "{completed}");

    let (pdbs, _) = cli.ok(&["get", "pdb", "-n", "shop"]).await;
    assert_eq!(
        header(&pdbs),
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{pdbs}"
    );
    assert_eq!(row(&pdbs, "cart")[1..4], ["2", "N/A", "1"]);

    cli.ok(&["cordon", "worker-04"]).await;
    assert!(sim.inspect(|c| {
        c.nodes
            .get("", "worker-04")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .unschedulable
            == Some(true)
    }));
    let (nodes, _) = cli.ok(&["get", "nodes"]).await;
    assert_eq!(row(&nodes, "worker-04")[1], "Ready,SchedulingDisabled");

    cli.ok(&["uncordon", "worker-04"]).await;
    assert!(sim.inspect(|c| {
        c.nodes
            .get("", "worker-04")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .unschedulable
            != Some(true)
    }));
    let (nodes, _) = cli.ok(&["get", "nodes", "worker-04"]).await;
    assert_eq!(row(&nodes, "worker-04")[1], "Ready");
    sim.shutdown().await;
}

/// worker-1 runs two of web's four pods and the budget allows one disruption: kubectl must
/// get a 429 for the second, retry, and finish once the first one's replacement is Ready.
async fn drain_waits_for_budget(which: Kubectl) {
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let cli = Cli::new(which, &sim);
    let on_node = pods_on(&sim, "worker-1");
    assert_eq!(
        on_node.iter().filter(|p| p.starts_with("web-")).count(),
        2,
        "precondition: {on_node:?}"
    );
    assert!(
        on_node.iter().any(|p| p.starts_with("node-agent-")),
        "{on_node:?}"
    );

    let (stdout, stderr) = cli
        .ok(&[
            "drain",
            "worker-1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
        ])
        .await;
    let output = format!("{stdout}{stderr}");
    assert!(
        output.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{output}"
    );

    let stats = sim.stats();
    assert!(
        stats
            .evictions_refused
            .get("shop/web")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.pdb_violations, 0, "{:?}", stats.violations);
    assert!(stats.evictions_accepted >= 4, "{stats:?}");

    let unschedulable = sim.inspect(|c| {
        c.nodes
            .get("", "worker-1")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .unschedulable
    });
    assert_eq!(unschedulable, Some(true));
    let left = pods_on(&sim, "worker-1");
    assert!(
        !left.is_empty() && left.iter().all(|p| p.starts_with("node-agent-")),
        "left on worker-1: {left:?}"
    );
    // The StatefulSet pod came back under its name, elsewhere.
    let db2_node = sim.inspect(|c| {
        c.pods
            .get("shop", "db-2")
            .map(|p| p.spec.clone().unwrap().node_name)
    });
    assert!(matches!(db2_node, None | Some(Some(_))) && db2_node != Some(Some("worker-1".into())));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_gets_and_cordons() {
    get_and_cordon(Kubectl::V1_20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_gets_and_cordons() {
    get_and_cordon(Kubectl::Current).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_drain_waits_for_the_budget() {
    drain_waits_for_budget(Kubectl::V1_20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_drain_waits_for_the_budget() {
    drain_waits_for_budget(Kubectl::Current).await;
}

/// Current kubectl asks for aggregated discovery first; the legacy documents must make it
/// fall back without complaint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_kubectl_falls_back_from_aggregated_discovery() {
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let cli = Cli::new(Kubectl::Current, &sim);
    let (stdout, stderr) = cli.ok(&["get", "pdb", "-A", "-v=7"]).await;
    assert!(
        stderr.contains("as=APIGroupDiscoveryList"),
        "kubectl did not ask for aggregated discovery:\n{stderr}"
    );
    assert!(
        stderr.contains("/apis/policy/v1?") || stderr.contains("/apis/policy/v1 "),
        "no legacy discovery:\n{stderr}"
    );
    // klog lines start with a severity letter and the date: E1124 / W0309.
    let complaint = stderr.lines().find(|l| {
        let mut chars = l.chars();
        matches!(chars.next(), Some('E' | 'W')) && chars.take(4).all(|c| c.is_ascii_digit())
    });
    assert!(
        complaint.is_none(),
        "kubectl logged errors or warnings:\n{stderr}"
    );
    assert!(stdout.contains("web"), "{stdout}");
    sim.shutdown().await;
}

/// `kubectl get pods -w`: the initial table, then rows for changes streamed by the watch.
async fn get_watch_follows_a_deletion(which: Kubectl) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let sim = start(&scenario_file("drain-blocked.toml")).await;
    let cli = Cli::new(which, &sim);
    let mut child = cli.spawn(&["get", "pods", "-n", "shop", "-w"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = next_line(&mut lines).await;
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{header}"
    );
    // Initial rows, up to db-2.
    loop {
        if next_line(&mut lines).await.starts_with("db-2 ") {
            break;
        }
    }
    let client = common::client(&sim);
    let reply = common::request(
        &client,
        "DELETE",
        "/api/v1/namespaces/shop/pods/db-2",
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    // The watch shows db-2 terminating, then a new db-2 being created.
    let mut seen = Vec::new();
    loop {
        let line = next_line(&mut lines).await;
        if line.starts_with("db-2 ") {
            seen.push(
                line.split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned(),
            );
            if seen.iter().any(|s| s == "Terminating")
                && seen.last().is_some_and(|s| s != "Terminating")
            {
                break;
            }
        }
    }
    child.kill().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_get_watch_follows_a_deletion() {
    get_watch_follows_a_deletion(Kubectl::V1_20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_current_get_watch_follows_a_deletion() {
    get_watch_follows_a_deletion(Kubectl::Current).await;
}

type KubectlLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

async fn next_line(lines: &mut KubectlLines) -> String {
    tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .expect("kubectl printed nothing")
        .unwrap()
        .expect("kubectl ended")
}
