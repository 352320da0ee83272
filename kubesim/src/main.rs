//! `k3sfleet-kubesim --scenario FILE --listen ADDR [--kubeconfig-out PATH]`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use k3sfleet_kubesim::{KubeSim, Scenario};

/// A simulated Kubernetes API server for k3sfleet's tests and demo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Scenario file (TOML) describing nodes, workloads, PDBs and timings.
    #[arg(long, env = "KUBESIM_SCENARIO")]
    scenario: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let scenario = Scenario::from_file(&args.scenario)?;
    let sim = KubeSim::start(&scenario, &args.listen).await?;
    if let Some(path) = &args.kubeconfig_out {
        sim.write_kubeconfig(path)?;
    }
    // Scripts read this line to find the server.
    println!("listening on {}", sim.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    let stats = sim.stats();
    eprintln!(
        "stopping: {} PDB violations, {} evictions accepted, {} refused",
        stats.pdb_violations,
        stats.evictions_accepted,
        stats.evictions_refused_total()
    );
    sim.shutdown().await;
    Ok(())
}
