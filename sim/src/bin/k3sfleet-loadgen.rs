//! k3sfleet-loadgen: thousands of simulated agents against a coordinator.
//!
//! `run` points them at any coordinator (given the fleet CA's key, it issues
//! one certificate per agent in memory); `bench` starts coordinators itself
//! and prints the fleet-scale figures (see README, BENCHMARKS).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k3sfleet_pki::FleetCa;
use k3sfleet_sim::load::bench::{self, BenchSpec};
use k3sfleet_sim::load::{LoadFleet, LoadSpec, Target, agent_names, issue_agents, raise_fd_limit};
use rustls::pki_types::ServerName;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run N simulated agents against a coordinator until interrupted.
    Run(RunArgs),
    /// Start a coordinator per fleet size and print its figures under load.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The coordinator, HOST:PORT (an IP address).
    #[arg(long)]
    coordinator: SocketAddr,
    /// The name in the coordinator's certificate (default: its IP address).
    #[arg(long)]
    server_name: Option<String>,
    /// The fleet CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The fleet CA key, to issue the agents' certificates in memory.
    #[arg(long)]
    ca_key: PathBuf,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Node names are PREFIX00001, PREFIX00002, ...
    #[arg(long, default_value = "load-")]
    prefix: String,
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    interval: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_reconnect_delay: Duration,
    /// Local addresses to connect from, e.g. 127.0.0.2 (repeatable).
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    agents: Vec<usize>,
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The steady-state window CPU is averaged over (several intervals).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    measure: Duration,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// Spread the agents over 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    source_addresses: usize,
    #[arg(long, default_value_t = 300)]
    probe_samples: usize,
    #[arg(long, default_value_t = 5)]
    nodes_runs: usize,
    /// Restart with SIGKILL instead of SIGTERM.
    #[arg(long)]
    crash: bool,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_reconnect_delay: Duration,
    /// Working directory (default: a fresh temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let limit = raise_fd_limit().context("raising the open-file limit")?;
    match Cli::parse().command {
        Mode::Run(args) => run(args, limit).await,
        Mode::Bench(args) => bench_main(args, limit).await,
    }
}

async fn run(args: RunArgs, fd_limit: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (args.agents as u64) < fd_limit.saturating_sub(64),
        "{} agents need as many open files; the limit is {fd_limit} (raise ulimit -n)",
        args.agents
    );
    let ca = FleetCa::load(&args.ca, &args.ca_key)?;
    let names = agent_names(&args.prefix, args.agents);
    let issued = issue_agents(&ca, &names, Duration::from_secs(24 * 3600))?;
    eprintln!(
        "issued {} certificates in {:.2?}",
        args.agents, issued.elapsed
    );
    let server_name = args
        .server_name
        .unwrap_or_else(|| args.coordinator.ip().to_string());
    let fleet = LoadFleet::start(LoadSpec {
        target: Target {
            address: args.coordinator,
            server_name: ServerName::try_from(server_name.clone())
                .with_context(|| format!("--server-name {server_name:?} is not a valid name"))?
                .to_owned(),
            roots: k3sfleet_pki::root_store(&args.ca)?,
            source_addresses: args.sources,
            connect_timeout: Duration::from_secs(20),
        },
        identities: issued.identities,
        interval: args.interval,
        max_reconnect_delay: args.max_reconnect_delay,
        k3s_version: "v1.31.4+k3s1".into(),
        ramp: args.ramp,
        probes: 0,
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => eprintln!("{:?}", fleet.stats().snapshot()),
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    fleet.stop().await;
    Ok(())
}

async fn bench_main(args: BenchArgs, fd_limit: u64) -> anyhow::Result<()> {
    let largest = args.agents.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        (largest as u64) < fd_limit.saturating_sub(64),
        "{largest} agents need as many open files; the limit is {fd_limit} (raise ulimit -n)"
    );
    let temp;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let spec = BenchSpec {
        sizes: args.agents,
        interval: args.interval,
        measure: args.measure,
        ramp: args.ramp,
        source_addresses: args.source_addresses,
        probe_samples: args.probe_samples,
        nodes_runs: args.nodes_runs,
        crash: args.crash,
        max_reconnect_delay: args.max_reconnect_delay,
        dir,
    };
    println!(
        "k3sfleet fleet-scale benchmark: report interval {:?}, CPU averaged over {:?}, restart by {}",
        spec.interval,
        spec.measure,
        if spec.crash { "SIGKILL" } else { "SIGTERM" }
    );
    println!("{}", bench::header());
    let figures = bench::run(&spec).await?;
    println!("\nsummary");
    println!("{}", bench::header());
    for f in &figures {
        println!("{}", bench::row(f));
    }
    Ok(())
}
