//! `k3sfleet-demo`: a fleet on this machine, shown through the CLI.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k3sfleet_sim::launcher::{AgentSpec, LocalFleet};

/// Start a coordinator and agents on this machine and show the fleet.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-demo")]
struct Args {
    /// Number of K3s servers
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Number of workers
    #[arg(long, default_value_t = 15)]
    workers: usize,
    /// Working directory [default: a fresh temporary directory]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile_dir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.clone());
    let mut specs = Vec::new();
    specs.extend((1..=args.servers).map(|i| AgentSpec {
        name: format!("server-{i}"),
        role: "server".into(),
    }));
    specs.extend((1..=args.workers).map(|i| AgentSpec {
        name: format!("worker-{i:02}"),
        role: "agent".into(),
    }));
    println!(
        "Starting a coordinator and {} agents in {}",
        specs.len(),
        dir.display()
    );
    let mut fleet = LocalFleet::start(&dir, &specs, "2s")?;
    fleet.wait_connected(Duration::from_secs(60))?;
    println!("\n$ k3sfleet nodes");
    print!("{}", fleet.cli_output(&["nodes"])?);
    fleet.stop();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("k3sfleet-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
