//! Drains the same node of the same scenario with the drain engine and with
//! kubectl (`drain --ignore-daemonsets --delete-emptydir-data`, which waits a
//! fixed 5 s after each 429), side by side, each on a fresh simulated cluster,
//! alternating which goes first. Prints both times, their ratio, and the 429s
//! and PDB violations each caused.
//!
//! The default scenario (`drain-bench.toml` next to this file) makes worker-1
//! wait three times for web's budget; kubesim's `drain-blocked.toml` waits
//! once, for exactly 5 s: kubectl's best case.
//!
//! ```sh
//! scripts/fetch-test-tools.sh     # kubectl into .cache/tools
//! cargo run -p k3sfleet-coordinator --example drain_bench -- --runs 3
//! cargo run -p k3sfleet-coordinator --example drain_bench -- \
//!     --scenario kubesim/scenarios/drain-blocked.toml
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use k3sfleet_coordinator::drain::{DrainEngine, DrainOptions, go_duration};
use k3sfleet_kubesim::{KubeSim, Running, Scenario};
use k3sfleet_proto::v1::DrainOutcome;
use tokio_util::sync::CancellationToken;

/// Either drain giving up after this long is a failed benchmark.
const LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
struct Args {
    /// Scenario file [default: coordinator/examples/drain-bench.toml]
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// The node to drain
    #[arg(long, default_value = "worker-1")]
    node: String,
    /// Runs of each
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// kubectl binary [default: $KUBECTL_CURRENT, else .cache/tools/kubectl-current/kubectl]
    #[arg(long)]
    kubectl: Option<PathBuf>,
}

struct Measured {
    elapsed: Duration,
    refused: u64,
    violations: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the coordinator crate lives in the workspace")?;
    let scenario_path = args
        .scenario
        .clone()
        .unwrap_or_else(|| root.join("coordinator/examples/drain-bench.toml"));
    let scenario = Scenario::from_file(&scenario_path)?;
    let kubectl = args
        .kubectl
        .clone()
        .or_else(|| std::env::var_os("KUBECTL_CURRENT").map(PathBuf::from))
        .unwrap_or_else(|| root.join(".cache/tools/kubectl-current/kubectl"));
    if !kubectl.is_file() {
        bail!(
            "{} not found: run scripts/fetch-test-tools.sh or pass --kubectl",
            kubectl.display()
        );
    }
    println!(
        "draining {} of {} ({} runs each; time scale {}x)",
        args.node,
        scenario_path.display(),
        args.runs,
        scenario.cluster.time_scale
    );
    println!(
        "{:>3}  {:>10}  {:>10}  {:>7}  {:>12}  {:>12}",
        "run", "kubectl", "engine", "ratio", "429s kubectl", "429s engine"
    );
    let mut kubectl_times = Vec::new();
    let mut engine_times = Vec::new();
    for run in 1..=args.runs {
        let (by_kubectl, by_engine) = if run % 2 == 1 {
            let k = with_kubectl(&scenario, &args.node, &kubectl).await?;
            (k, with_engine(&scenario, &args.node).await?)
        } else {
            let e = with_engine(&scenario, &args.node).await?;
            (with_kubectl(&scenario, &args.node, &kubectl).await?, e)
        };
        if by_kubectl.violations + by_engine.violations > 0 {
            bail!(
                "PDB violations: kubectl {}, engine {}",
                by_kubectl.violations,
                by_engine.violations
            );
        }
        println!(
            "{run:>3}  {:>9.2}s  {:>9.2}s  {:>6.2}x  {:>12}  {:>12}",
            by_kubectl.elapsed.as_secs_f64(),
            by_engine.elapsed.as_secs_f64(),
            by_kubectl.elapsed.as_secs_f64() / by_engine.elapsed.as_secs_f64(),
            by_kubectl.refused,
            by_engine.refused
        );
        kubectl_times.push(by_kubectl.elapsed);
        engine_times.push(by_engine.elapsed);
    }
    let (k, e) = (median(&mut kubectl_times), median(&mut engine_times));
    println!(
        "median: kubectl {:.2}s, engine {:.2}s: the engine is {:.2}x as fast; 0 PDB violations",
        k.as_secs_f64(),
        e.as_secs_f64(),
        k.as_secs_f64() / e.as_secs_f64()
    );
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn with_kubectl(scenario: &Scenario, node: &str, kubectl: &Path) -> anyhow::Result<Measured> {
    let sim = KubeSim::start(scenario, "127.0.0.1:0").await?;
    let home = tempfile::tempdir()?;
    let kubeconfig = home.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let started = Instant::now();
    let output = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new(kubectl)
            .args([
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
            ])
            .arg(format!(
                "--cache-dir={}",
                home.path().join("cache").display()
            ))
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECONFIG", &kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("kubectl drain did not finish")??;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "kubectl drain failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(finish(sim, elapsed).await)
}

async fn with_engine(scenario: &Scenario, node: &str) -> anyhow::Result<Measured> {
    let sim = KubeSim::start(scenario, "127.0.0.1:0").await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let engine = DrainEngine::new(k3sfleet_coordinator::kube::client(&kubeconfig, None).await?);
    let options = DrainOptions {
        delete_emptydir_data: true,
        timeout: LIMIT,
        ..Default::default()
    };
    // Nobody reads the events: a closed channel costs the engine nothing.
    let (events, _) = tokio::sync::mpsc::channel(1);
    let started = Instant::now();
    engine
        .cordon(
            node,
            &k3sfleet_coordinator::drain::Owner::Drain("bench".into()),
        )
        .await?;
    let result = engine
        .drain(node, &options, events, CancellationToken::new())
        .await?;
    let elapsed = started.elapsed();
    if result.outcome != DrainOutcome::Drained as i32 {
        bail!("the engine did not drain {node}: {}", result.message);
    }
    let waits: Vec<String> = result
        .waits
        .iter()
        .map(|w| {
            format!(
                "{} {}",
                w.reason,
                go_duration(Duration::from_millis(w.millis))
            )
        })
        .collect();
    tracing::debug!(waits = waits.join(", "), "engine waits");
    Ok(finish(sim, elapsed).await)
}

async fn finish(sim: Running, elapsed: Duration) -> Measured {
    let stats = sim.stats();
    sim.shutdown().await;
    Measured {
        elapsed,
        refused: stats.evictions_refused_total(),
        violations: stats.pdb_violations,
    }
}
