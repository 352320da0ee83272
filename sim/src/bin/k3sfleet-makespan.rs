//! `k3sfleet-makespan`: how long the demo fleet's upgrade takes with the
//! PDB-aware batch planner, one worker at a time, and at best.
//!
//! Runs the demo scenario twice on fresh labs (`--max-unavailable` as given,
//! then 1) and prints, side by side, each makespan and waves, with a lower
//! bound from the planner run: the servers one after another plus the slowest
//! worker, as if every worker could go in a single wave.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
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
}

fn millis(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
        .unwrap_or(0)
}

async fn run(max_unavailable: &str, settle: &str) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let lab = Lab::start(dir.path(), LabSpec::demo()?)
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
        violations: lab.kubesim.stats().pdb_violations,
    };
    lab.shutdown().await;
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!(
        "planner run (--max-unavailable {}) ...",
        args.max_unavailable
    );
    let planner = run(&args.max_unavailable, &args.settle).await?;
    eprintln!("one-at-a-time run (--max-unavailable 1) ...");
    let serial = run("1", &args.settle).await?;

    let servers: f64 = planner
        .node_seconds
        .iter()
        .filter(|(s, _)| *s)
        .map(|(_, t)| t)
        .sum();
    let slowest_worker = planner
        .node_seconds
        .iter()
        .filter(|(s, _)| !*s)
        .map(|(_, t)| *t)
        .fold(0.0, f64::max);
    let bound = servers + slowest_worker;

    println!(
        "Demo fleet (3 servers, 15 workers), settle {}:",
        args.settle
    );
    println!(
        "{:<28} {:>10} {:>7} {:>10} {:>14}",
        "", "makespan", "waves", "vs bound", "PDB violations"
    );
    for (name, run) in [
        (format!("planner ({})", args.max_unavailable), &planner),
        ("one at a time".to_string(), &serial),
    ] {
        println!(
            "{name:<28} {:>9.1}s {:>7} {:>9.2}x {:>14}",
            run.makespan_s,
            run.waves,
            run.makespan_s / bound,
            run.violations
        );
    }
    println!(
        "{:<28} {:>9.1}s {:>7} {:>9.2}x",
        "lower bound", bound, "", 1.0
    );
    println!(
        "The planner took {:.0}% of one-at-a-time's time ({} waves instead of {}).",
        100.0 * planner.makespan_s / serial.makespan_s,
        planner.waves,
        serial.waves
    );
    Ok(())
}
