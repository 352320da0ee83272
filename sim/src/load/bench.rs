//! The fleet-scale benchmark: for each fleet size, a fresh coordinator (the
//! real binary) and that many simulated agents, then the figures operators
//! care about. Prints figures; asserts nothing (a benchmark, not a test).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::harness::{LoadCoordinator, connected_nodes};
use super::probe::{quantile, report_latencies};
use super::{LoadFleet, LoadSpec, ProcessStats, agent_names, issue_agents};

#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub sizes: Vec<usize>,
    pub interval: Duration,
    /// The steady-state window CPU is averaged over.
    pub measure: Duration,
    /// New agents arrive over this long.
    pub ramp: Duration,
    pub source_addresses: usize,
    pub probe_samples: usize,
    pub nodes_runs: usize,
    /// SIGKILL instead of SIGTERM for the restart.
    pub crash: bool,
    pub max_reconnect_delay: Duration,
    pub dir: PathBuf,
}

/// The figures of one fleet size.
#[derive(Debug, Clone, Default)]
pub struct BenchFigures {
    pub agents: usize,
    pub issue: Duration,
    pub first_connect: Option<Duration>,
    /// Coordinator CPU in the steady-state window, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub report_p50: Option<Duration>,
    pub report_p99: Option<Duration>,
    pub report_samples: usize,
    pub nodes_p50: Option<Duration>,
    pub nodes_max: Option<Duration>,
    pub nodes_listed: usize,
    /// From stopping the coordinator until the new one listens.
    pub restart_listening: Duration,
    /// From stopping the coordinator until every agent holds a session again.
    pub reconnect_all: Option<Duration>,
    /// Coordinator CPU spent by the new process until everyone was back.
    pub reconnect_cpu: Duration,
    pub reconnect_peak_rss_bytes: u64,
    /// The simulated agents' own CPU in the window (they share the machine).
    pub loadgen_cpu_cores: f64,
}

pub async fn run(spec: &BenchSpec) -> anyhow::Result<Vec<BenchFigures>> {
    let mut all = Vec::new();
    for &size in &spec.sizes {
        eprintln!("== {size} agents ==");
        let figures = run_size(spec, size)
            .await
            .with_context(|| format!("benchmark at {size} agents"))?;
        println!("{}", row(&figures));
        all.push(figures);
    }
    Ok(all)
}

async fn run_size(spec: &BenchSpec, size: usize) -> anyhow::Result<BenchFigures> {
    let dir = spec.dir.join(format!("agents-{size}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut coordinator = LoadCoordinator::start(&dir, "")?;
    let mut figures = BenchFigures {
        agents: size,
        ..Default::default()
    };

    let issued = issue_agents(
        &coordinator.ca,
        &agent_names("load-", size),
        Duration::from_secs(24 * 3600),
    )?;
    figures.issue = issued.elapsed;
    eprintln!("issued {size} certificates in {:.2?}", issued.elapsed);

    let fleet = LoadFleet::start(LoadSpec {
        target: coordinator.target(spec.source_addresses)?,
        identities: issued.identities,
        interval: spec.interval,
        max_reconnect_delay: spec.max_reconnect_delay,
        k3s_version: "v1.31.4+k3s1".into(),
        ramp: spec.ramp,
        probes: 20.min(size),
    });
    let connect_timeout = spec.ramp + Duration::from_secs(180);
    figures.first_connect = fleet.wait_all_connected(connect_timeout).await;
    eprintln!(
        "all connected after {:?} (ramp {:?}); {:?}",
        figures.first_connect,
        spec.ramp,
        fleet.stats().snapshot()
    );

    // One interval so every agent has reported and their phases are spread.
    tokio::time::sleep(spec.interval).await;
    let pid = coordinator.pid()?;
    let own_pid = std::process::id() as i32;
    let before = ProcessStats::read(pid)?;
    let own_before = ProcessStats::read(own_pid)?;
    let window = Instant::now();
    let admin = coordinator.admin_channel().await?;
    let spacing = spec.measure / spec.probe_samples.max(1) as u32;
    let latencies = report_latencies(&fleet, admin, spec.probe_samples, spacing).await?;
    let elapsed = window.elapsed().as_secs_f64();
    let after = ProcessStats::read(pid)?;
    let own_after = ProcessStats::read(own_pid)?;
    figures.cpu_cores = (after.cpu - before.cpu).as_secs_f64() / elapsed;
    figures.loadgen_cpu_cores = (own_after.cpu - own_before.cpu).as_secs_f64() / elapsed;
    figures.rss_bytes = after.rss_bytes;
    figures.peak_rss_bytes = after.peak_rss_bytes;
    figures.report_p50 = quantile(&latencies, 0.5);
    figures.report_p99 = quantile(&latencies, 0.99);
    figures.report_samples = latencies.len();

    let mut listings = Vec::new();
    for _ in 0..spec.nodes_runs {
        let (nodes, took) = coordinator.nodes_json()?;
        figures.nodes_listed = connected_nodes(&nodes);
        listings.push(took);
    }
    figures.nodes_p50 = quantile(&listings, 0.5);
    figures.nodes_max = listings.iter().max().copied();
    eprintln!("steady state: {figures:?}");

    let stopped = Instant::now();
    coordinator.stop(spec.crash);
    coordinator.start_again()?;
    figures.restart_listening = stopped.elapsed();
    let new_pid = coordinator.pid()?;
    let reconnected = fleet
        .wait_all_connected(Duration::from_secs(300))
        .await
        .map(|_| stopped.elapsed());
    figures.reconnect_all = reconnected;
    let storm = ProcessStats::read(new_pid)?;
    figures.reconnect_cpu = storm.cpu;
    figures.reconnect_peak_rss_bytes = storm.peak_rss_bytes;
    eprintln!(
        "reconnected: {:?} after the stop; {:?}",
        figures.reconnect_all,
        fleet.stats().snapshot()
    );

    fleet.stop().await;
    coordinator.stop(false);
    Ok(figures)
}

pub fn header() -> String {
    format!(
        "{:>6} {:>8} {:>9} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "agents",
        "issue",
        "connect",
        "cpu",
        "rss",
        "peak",
        "rep p50",
        "rep p99",
        "nodes",
        "restart",
        "reconn",
        "storm cpu",
        "lg cpu"
    )
}

pub fn row(f: &BenchFigures) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.1}ms", d.as_secs_f64() * 1e3)
        })
    };
    let s =
        |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    let mib = |b: u64| format!("{}MiB", b >> 20);
    format!(
        "{:>6} {:>8} {:>9} {:>6.2} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2}",
        f.agents,
        s(Some(f.issue)),
        s(f.first_connect),
        f.cpu_cores,
        mib(f.rss_bytes),
        mib(f.peak_rss_bytes.max(f.reconnect_peak_rss_bytes)),
        ms(f.report_p50),
        ms(f.report_p99),
        ms(f.nodes_p50),
        s(Some(f.restart_listening)),
        s(f.reconnect_all),
        s(Some(f.reconnect_cpu)),
        f.loadgen_cpu_cores,
    )
}
