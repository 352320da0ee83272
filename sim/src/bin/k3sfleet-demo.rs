//! `k3sfleet-demo`: a rolling K3s upgrade of a simulated fleet on this machine.
//!
//! Starts the simulated cluster (3 servers, 15 workers, a shop with
//! PodDisruptionBudgets), the coordinator and 18 real agents on stand-in
//! hosts, shows the plan, runs the upgrade with the live view, and ends with
//! the summary and the PDB violations the simulated API server counted.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use k3sfleet_sim::lab::{Lab, LabSpec};

/// Roll K3s across a simulated fleet on this machine.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-demo")]
struct Args {
    /// Working directory (kept afterwards, with every log) [default: a fresh temporary one]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Workers down at once
    #[arg(long, default_value = "25%")]
    max_unavailable: String,
    /// How long each node must stay healthy after its upgrade
    #[arg(long, default_value = "5s")]
    settle: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("k3sfleet-demo-{}", std::process::id())),
    };
    let spec = LabSpec::demo()?;
    let (from, to) = (spec.from_version.clone(), spec.to_version.clone());
    println!(
        "Starting the simulated cluster, a coordinator and {} agents in {}",
        spec.scenario.nodes.len(),
        dir.display()
    );
    let started = Instant::now();
    let lab = Lab::start(&dir, spec).await.context("starting the lab")?;
    println!(
        "Ready in {:.1}s; every node runs K3s {from}.\n",
        started.elapsed().as_secs_f64()
    );
    print!("$ k3sfleet nodes\n{}", lab.cli_ok(&["nodes"])?);

    let options = [
        "--to",
        &to,
        "--max-unavailable",
        &args.max_unavailable,
        "--settle",
        &args.settle,
        // The shop's search indexer keeps scratch data in an emptyDir, and
        // someone left a bare debug pod on worker-07: the plan names both.
        "--delete-emptydir-data",
        "--force",
    ];
    println!("\n$ k3sfleet upgrade plan {}", options.join(" "));
    print!(
        "{}",
        lab.cli_ok(&[&["upgrade", "plan"][..], &options[..]].concat())?
    );

    println!("\n$ k3sfleet upgrade start {} --watch", options.join(" "));
    let status = lab
        .cli()?
        .args([&["upgrade", "start"][..], &options[..], &["--watch"][..]].concat())
        .status()?;

    let stats = lab.kubesim.stats();
    let refused: u64 = stats.evictions_refused.values().sum();
    println!(
        "\nThe simulated API server counted {} evictions, {refused} refused with 429 by a PodDisruptionBudget, \
         {} replacement pods, and {} PDB violations.",
        stats.evictions_accepted, stats.pods_recreated, stats.pdb_violations
    );
    let cordoned = lab.cordoned_nodes();
    println!(
        "Nodes still cordoned: {}. Logs and state: {}",
        if cordoned.is_empty() {
            "none".to_string()
        } else {
            cordoned.join(", ")
        },
        dir.display()
    );
    let succeeded = status.success() && stats.pdb_violations == 0 && cordoned.is_empty();
    lab.shutdown().await;
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
