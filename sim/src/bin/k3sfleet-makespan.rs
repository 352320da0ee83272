//! `k3sfleet-makespan`: how long the demo fleet's upgrade takes with the
//! rollout's scheduler, one worker at a time, and at best.
//!
//! Runs the demo scenario twice on fresh labs (`--max-unavailable` as given,
//! then 1) and prints, side by side, each makespan against a lower bound
//! from the scheduler run: `LB = S + max(max_w t_w, sum_w t_w / k)`, with S
//! the servers' times in series (they go one at a time), t_w each worker's
//! own time from its start to its end, and k the slots; no schedule of those
//! workers in k slots after those servers can be shorter. The demo's hosts
//! are paced like real ones (some slower to restart K3s or to turn Ready:
//! `HostPace::demo_spread`), so the workers' times differ.
//!
//! The demo fleet runs Longhorn (its databases' volumes, three replicas
//! each); the first two runs leave it out, a third runs the scheduler with
//! it: the difference is what waiting for Longhorn's rebuilds between nodes
//! costs.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use k3sfleet_coordinator::rollout::planner::MaxUnavailable;
use k3sfleet_sim::lab::{Lab, LabSpec};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "k3sfleet-makespan")]
struct Args {
    /// Workers down at once in the planner run
    #[arg(long, default_value = "25%")]
    max_unavailable: String,
    /// Settle period per node
    #[arg(long, default_value = "5s")]
    settle: String,
}

struct Run {
    makespan_s: f64,
    waves: u64,
    /// (server?, seconds) per node.
    node_seconds: Vec<(bool, f64)>,
    violations: u64,
    /// Volumes the simulated Longhorn saw without a healthy replica.
    longhorn_violations: usize,
    longhorn_rebuilds: u64,
}

fn millis(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
        .unwrap_or(0)
}

async fn run(max_unavailable: &str, settle: &str, longhorn: bool) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut spec = LabSpec::demo()?;
    if !longhorn {
        spec.scenario.longhorn = None;
    }
    let lab = Lab::start(dir.path(), spec)
        .await
        .context("starting the lab")?;
    let to = lab.spec.to_version.clone();
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| {
        lab.cli()?
            .args([
                "upgrade",
                "start",
                "--to",
                &to,
                "--max-unavailable",
                max_unavailable,
                "--settle",
                settle,
                "--delete-emptydir-data",
                "--force",
                "--watch",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running k3sfleet upgrade start")
    })?;
    anyhow::ensure!(
        status.success(),
        "the rollout did not complete; logs in {}",
        dir.path().display()
    );
    let wall = started.elapsed().as_secs_f64();
    let rollout = tokio::task::block_in_place(|| lab.rollout())?;
    let node_seconds = rollout["nodes"]
        .as_array()
        .context("no nodes in the status")?
        .iter()
        .map(|n| {
            (
                n["role"] == "NODE_ROLE_SERVER",
                (millis(&n["finishedUnixMs"]) - millis(&n["startedUnixMs"])) as f64 / 1000.0,
            )
        })
        .collect();
    let makespan_ms = millis(&rollout["finishedUnixMs"]) - millis(&rollout["createdUnixMs"]);
    let run = Run {
        makespan_s: if makespan_ms > 0 {
            makespan_ms as f64 / 1000.0
        } else {
            wall
        },
        waves: rollout["wavesStarted"].as_u64().unwrap_or(0),
        node_seconds,
        violations: lab.kubesim().stats().pdb_violations,
        longhorn_violations: lab.kubesim().stats().longhorn_violations.len(),
        longhorn_rebuilds: lab.kubesim().stats().longhorn_rebuilds,
    };
    lab.shutdown().await;
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!(
        "scheduler run (--max-unavailable {}) ...",
        args.max_unavailable
    );
    let planner = run(&args.max_unavailable, &args.settle, false).await?;
    eprintln!("one-at-a-time run (--max-unavailable 1) ...");
    let serial = run("1", &args.settle, false).await?;
    eprintln!(
        "scheduler run with Longhorn (--max-unavailable {}) ...",
        args.max_unavailable
    );
    let longhorn = run(&args.max_unavailable, &args.settle, true).await?;

    let servers: f64 = planner
        .node_seconds
        .iter()
        .filter(|(s, _)| *s)
        .map(|(_, t)| t)
        .sum();
    let workers: Vec<f64> = planner
        .node_seconds
        .iter()
        .filter(|(s, _)| !*s)
        .map(|(_, t)| *t)
        .collect();
    let slots = args
        .max_unavailable
        .parse::<MaxUnavailable>()
        .map_err(anyhow::Error::msg)?
        .resolve(workers.len()) as f64;
    let slowest = workers.iter().copied().fold(0.0, f64::max);
    let spread = workers.iter().sum::<f64>() / slots;
    let bound = servers + slowest.max(spread);

    println!(
        "Demo fleet (3 servers, 15 workers, hosts paced apart), settle {}:",
        args.settle
    );
    println!(
        "{:<28} {:>10} {:>8} {:>10} {:>14}",
        "", "makespan", "batches", "vs LB", "PDB violations"
    );
    for (name, run) in [
        (format!("scheduler ({})", args.max_unavailable), &planner),
        ("one at a time".to_string(), &serial),
        (
            format!("scheduler, Longhorn ({})", args.max_unavailable),
            &longhorn,
        ),
    ] {
        println!(
            "{name:<28} {:>9.1}s {:>8} {:>9.2}x {:>14}",
            run.makespan_s,
            run.waves,
            run.makespan_s / bound,
            run.violations
        );
    }
    println!(
        "{:<28} {:>9.1}s {:>8} {:>9.2}x   (S {servers:.1}s + max(slowest worker {slowest:.1}s, sum/k {spread:.1}s), k = {slots})",
        "lower bound LB", bound, "", 1.0
    );
    println!(
        "The scheduler took {:.2}x LB (target: at most 1.25x) and was {:.2}x faster than one at a time (target: at least 2.5x).",
        planner.makespan_s / bound,
        serial.makespan_s / planner.makespan_s,
    );
    let (volumes, rebuild) = LabSpec::demo()?
        .scenario
        .longhorn
        .map(|l| (l.volumes.len(), l.rebuild_seconds))
        .unwrap_or_default();
    println!(
        "With Longhorn ({volumes} volumes, a replica's rebuild {rebuild}s in cluster time): {:.1}s against \
         {:.1}s without, {:+.1}s ({:+.0}%) spent waiting for rebuilds between nodes; {} replicas rebuilt, \
         {} volumes ever without a healthy replica, {} PDB violations.",
        longhorn.makespan_s,
        planner.makespan_s,
        longhorn.makespan_s - planner.makespan_s,
        100.0 * (longhorn.makespan_s / planner.makespan_s - 1.0),
        longhorn.longhorn_rebuilds,
        longhorn.longhorn_violations,
        longhorn.violations,
    );
    Ok(())
}
