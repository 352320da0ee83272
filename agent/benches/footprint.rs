//! Footprint: the agent next to Debian's prometheus-node-exporter, measured
//! side by side in one run (compare the ratios, not the absolute numbers,
//! on a noisy machine).
//!
//! For each: resident memory after warm-up and at the end, threads, CPU time
//! over an idle window (children included: the agent's host tools count
//! against it), and /metrics scrape latency and CPU over sequential scrapes.
//!
//! Two ways to run it:
//! - `scripts/footprint.sh`: on this machine. The bench starts the release
//!   binaries itself: the agent observes the real host (root `/`, real
//!   tools, default 15s check interval) and, when a release
//!   `k3sfleet-coordinator` sits beside it, holds a real mTLS session.
//! - `scripts/footprint.sh --booted`, and in CI `scripts/test-packaging.sh
//!   footprint`: in a booted Debian 12 (packaging/test/booted-footprint.sh),
//!   where both run as systemd services, the agent connected to a
//!   coordinator. The script runs this bench in the container's network
//!   namespace with `FOOTPRINT_ATTACH="name=PID@ADDRESS,..."`: it measures
//!   those processes (PIDs as this machine sees them) instead of starting
//!   any, and says where they run in `FOOTPRINT_SETTING`.
//!
//! `FOOTPRINT_SECONDS` sets the idle CPU window (default 60; the table says
//! which was used). With `FOOTPRINT_MAX_RSS_RATIO` the bench fails when the
//! first process's RSS is more than that fraction of the second's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k3sfleet_pki::{ClientCertRequest, FleetCa, Role, ServerCertRequest};

/// Enough that CPU per scrape, read in clock ticks (10 ms), is exact to
/// 0.05 ms.
const SCRAPES: usize = 200;

/// A process the bench started; killed when dropped.
struct Spawned {
    child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is measured: a process and where it serves /metrics.
struct Target {
    name: String,
    pid: u32,
    metrics: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(address: SocketAddr) -> usize {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut body = Vec::new();
    stream.read_to_end(&mut body).unwrap();
    assert!(body.starts_with(b"HTTP/1.") && body.windows(5).any(|w| w == b" 200 "));
    body.len()
}

/// A number field of /proc/PID/status ("VmRSS", "Threads"), units dropped.
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
}

/// CPU seconds used by the process and its reaped children.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 of stat(5) (utime stime cutime cstime), counted from "state" = 3.
    let ticks: u64 = fields[11..15].iter().sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let ca = FleetCa::generate("footprint CA").unwrap();
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    ca.save(&ca_crt, &ca_key, false).unwrap();
    let server = ca
        .issue_server(&ServerCertRequest {
            sans: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(86400),
        })
        .unwrap();
    let (server_crt, server_key) = (dir.join("coordinator.crt"), dir.join("coordinator.key"));
    std::fs::write(&server_crt, ca.chain_pem(&server.cert_pem)).unwrap();
    k3sfleet_pki::write_private_file(&server_key, server.key_pem.as_deref().unwrap(), false)
        .unwrap();
    let agent = ca
        .issue_client(&ClientCertRequest {
            name: "footprint-node".into(),
            role: Role::Agent,
            k3s_role: None,
            validity: Duration::from_secs(86400),
        })
        .unwrap();
    std::fs::write(dir.join("agent.crt"), &agent.cert_pem).unwrap();
    k3sfleet_pki::write_private_file(
        &dir.join("agent.key"),
        agent.key_pem.as_deref().unwrap(),
        false,
    )
    .unwrap();
    (ca_crt, ca_key, server_crt, server_key, dir.to_owned())
}

fn main() {
    // `cargo bench` passes --bench; nothing to filter here.
    let seconds: u64 = std::env::var("FOOTPRINT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let max_rss_ratio: Option<f64> = std::env::var("FOOTPRINT_MAX_RSS_RATIO").ok().map(|s| {
        s.parse()
            .expect("FOOTPRINT_MAX_RSS_RATIO: a number such as 0.5")
    });
    let rss_ratio = match std::env::var("FOOTPRINT_ATTACH") {
        Ok(spec) => {
            let targets = parse_attach(&spec);
            let setting = std::env::var("FOOTPRINT_SETTING")
                .unwrap_or_else(|_| "processes already running".to_string());
            measure(&targets, seconds, &setting)
        }
        Err(_) => spawn_and_measure(seconds),
    };
    if let (Some(max), Some(ratio)) = (max_rss_ratio, rss_ratio)
        && ratio > max
    {
        eprintln!("FAIL: RSS ratio {ratio:.2} is above FOOTPRINT_MAX_RSS_RATIO {max}");
        std::process::exit(1);
    }
}

/// `name=PID@ADDRESS,...`
fn parse_attach(spec: &str) -> Vec<Target> {
    spec.split(',')
        .map(|item| {
            let (name, rest) = item
                .split_once('=')
                .expect("FOOTPRINT_ATTACH: name=PID@ADDRESS");
            let (pid, address) = rest
                .split_once('@')
                .expect("FOOTPRINT_ATTACH: name=PID@ADDRESS");
            Target {
                name: name.to_string(),
                pid: pid.parse().expect("FOOTPRINT_ATTACH: a numeric PID"),
                metrics: address
                    .parse()
                    .expect("FOOTPRINT_ATTACH: an IP:PORT address"),
            }
        })
        .collect()
}

/// Starts a coordinator (when its release binary is there), the agent and
/// node_exporter on this machine, and measures the agent and node_exporter.
fn spawn_and_measure(seconds: u64) -> Option<f64> {
    let agent_bin = PathBuf::from(env!("CARGO_BIN_EXE_k3sfleet-agent"));
    let dir = tempfile::tempdir().unwrap();
    let (ca_crt, ca_key, server_crt, server_key, pki) = write_pki(dir.path());

    let coordinator_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let coordinator_bin = agent_bin.with_file_name("k3sfleet-coordinator");
    let coordinator = coordinator_bin.is_file().then(|| {
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{coordinator_address}\"\ndata_dir = \"{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nca_key = \"{}\"\n",
                dir.path().join("coordinator-data").display(),
                ca_crt.display(),
                server_crt.display(),
                server_key.display(),
                ca_key.display()
            ),
        )
        .unwrap();
        let child = Command::new(&coordinator_bin)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the coordinator", || TcpStream::connect(coordinator_address).is_ok());
        Spawned { child }
    });

    let state_dir = dir.path().join("agent-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "role = \"agent\"\nstate_dir = \"{}\"\n[coordinator]\naddress = \"{coordinator_address}\"\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            state_dir.display(),
            ca_crt.display(),
            pki.join("agent.crt").display(),
            pki.join("agent.key").display()
        ),
    )
    .unwrap();
    let agent = Spawned {
        child: Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&agent_config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let address_file = state_dir.join("metrics-address");
    wait_for("the agent's metrics address", || address_file.exists());
    let agent_metrics: SocketAddr = std::fs::read_to_string(&address_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let exporter_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let exporter = Spawned {
        child: Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={exporter_metrics}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (apt prometheus-node-exporter)"),
    };
    let targets = [
        Target {
            name: "k3sfleet-agent".into(),
            pid: agent.child.id(),
            metrics: agent_metrics,
        },
        Target {
            name: "node_exporter".into(),
            pid: exporter.child.id(),
            metrics: exporter_metrics,
        },
    ];
    let setting = if coordinator.is_some() {
        "this machine; agent connected to a coordinator"
    } else {
        "this machine; no coordinator beside the agent binary, agent not connected"
    };
    measure(&targets, seconds, setting)
}

/// Warm-up, idle window, scrapes; prints one row per target and the ratios
/// of the first to the second, and returns the ratio of their idle RSS.
fn measure(targets: &[Target], seconds: u64, setting: &str) -> Option<f64> {
    for t in targets {
        wait_for(&t.name, || TcpStream::connect(t.metrics).is_ok());
    }
    // Warm-up: let the agent run its first checks; a few scrapes each.
    std::thread::sleep(Duration::from_secs(5));
    for t in targets {
        for _ in 0..3 {
            scrape(t.metrics);
        }
    }
    let rss_warm: Vec<u64> = targets.iter().map(|t| rss_kib(t.pid)).collect();
    let cpu_start: Vec<f64> = targets.iter().map(|t| cpu_seconds(t.pid)).collect();
    eprintln!("measuring idle CPU for {seconds}s ...");
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu_used: Vec<f64> = targets
        .iter()
        .zip(&cpu_start)
        .map(|(t, start)| cpu_seconds(t.pid) - start)
        .collect();
    let rss_idle: Vec<u64> = targets.iter().map(|t| rss_kib(t.pid)).collect();
    // Heap and stacks vs. mapped files (the binary's touched pages).
    let rss_split: Vec<(u64, u64)> = targets
        .iter()
        .map(|t| {
            (
                status_field(t.pid, "RssAnon"),
                status_field(t.pid, "RssFile"),
            )
        })
        .collect();
    let threads: Vec<u64> = targets
        .iter()
        .map(|t| status_field(t.pid, "Threads"))
        .collect();

    let cpu_before_scrapes: Vec<f64> = targets.iter().map(|t| cpu_seconds(t.pid)).collect();
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut sizes = vec![0; targets.len()];
    for _ in 0..SCRAPES {
        // Alternate so all see the same machine noise.
        for (i, t) in targets.iter().enumerate() {
            let started = Instant::now();
            sizes[i] = scrape(t.metrics);
            latencies[i].push(started.elapsed());
        }
    }
    let rss_after: Vec<u64> = targets.iter().map(|t| rss_kib(t.pid)).collect();
    let cpu_scrapes: Vec<f64> = targets
        .iter()
        .zip(&cpu_before_scrapes)
        .map(|(t, start)| cpu_seconds(t.pid) - start)
        .collect();

    println!("\nfootprint: idle CPU over {seconds} s, {SCRAPES} sequential scrapes ({setting}):");
    println!(
        "{:<16} {:>10} {:>10} {:>15} {:>11} {:>7} {:>10} {:>14} {:>11} {:>11} {:>8}",
        "",
        "RSS warm",
        "RSS idle",
        "(anon + file)",
        "RSS scraped",
        "threads",
        "CPU idle",
        "CPU/scrape",
        "scrape p50",
        "scrape p90",
        "body"
    );
    let sorted: Vec<Vec<Duration>> = latencies
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v.sort();
            v
        })
        .collect();
    let pct = |i: usize, q: f64| sorted[i][((sorted[i].len() as f64 - 1.0) * q).round() as usize];
    for (i, t) in targets.iter().enumerate() {
        println!(
            "{:<16} {:>6.1} MiB {:>6.1} MiB {:>6.1} + {:>4.1} MiB {:>7.1} MiB {:>7} {:>8.3} s {:>11.2} ms {:>8.2} ms {:>8.2} ms {:>4} KiB",
            t.name,
            rss_warm[i] as f64 / 1024.0,
            rss_idle[i] as f64 / 1024.0,
            rss_split[i].0 as f64 / 1024.0,
            rss_split[i].1 as f64 / 1024.0,
            rss_after[i] as f64 / 1024.0,
            threads[i],
            cpu_used[i],
            cpu_scrapes[i] / SCRAPES as f64 * 1000.0,
            pct(i, 0.5).as_secs_f64() * 1000.0,
            pct(i, 0.9).as_secs_f64() * 1000.0,
            sizes[i] / 1024,
        );
    }
    if targets.len() < 2 {
        return None;
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            format!("n/a ({} used none)", targets[1].name)
        }
    };
    println!(
        "{} / {}: RSS {}, idle CPU {}, CPU per scrape {}, scrape p50 {}",
        targets[0].name,
        targets[1].name,
        ratio(rss_idle[0] as f64, rss_idle[1] as f64),
        ratio(cpu_used[0], cpu_used[1]),
        ratio(cpu_scrapes[0], cpu_scrapes[1]),
        ratio(pct(0, 0.5).as_secs_f64(), pct(1, 0.5).as_secs_f64()),
    );
    Some(rss_idle[0] as f64 / rss_idle[1] as f64)
}
