//! Footprint: the agent next to Debian's prometheus-node-exporter on this
//! machine, measured side by side in one run (compare the ratios, not the
//! absolute numbers, on a noisy machine).
//!
//! For each: resident memory after warm-up and at the end, CPU time over an
//! idle window (children included: the agent's host tools count against
//! it), and /metrics scrape latency over sequential scrapes.
//!
//! Run: `scripts/footprint.sh` (builds the release binaries, then
//! `cargo bench -p k3sfleet-agent --bench footprint`). The agent observes
//! the real host (root `/`, real tools, default 15s check interval) and,
//! when a release `k3sfleet-coordinator` sits beside it, holds a real mTLS
//! session. `FOOTPRINT_SECONDS` shortens the CPU window (default 60).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k3sfleet_pki::{ClientCertRequest, FleetCa, Role, ServerCertRequest};

const SCRAPES: usize = 50;

struct Process {
    name: &'static str,
    child: Child,
    metrics: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Resident set size in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
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
    let agent_bin = PathBuf::from(env!("CARGO_BIN_EXE_k3sfleet-agent"));
    let dir = tempfile::tempdir().unwrap();
    let (ca_crt, ca_key, server_crt, server_key, pki) = write_pki(dir.path());

    let coordinator_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let coordinator_bin = agent_bin.with_file_name("k3sfleet-coordinator");
    let _coordinator = coordinator_bin.is_file().then(|| {
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
        Process { name: "coordinator", child, metrics: coordinator_address }
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
    let agent_child = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&agent_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address_file = state_dir.join("metrics-address");
    wait_for("the agent's metrics address", || address_file.exists());
    let agent_metrics: SocketAddr = std::fs::read_to_string(&address_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let agent = Process {
        name: "k3sfleet-agent",
        child: agent_child,
        metrics: agent_metrics,
    };

    let exporter_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let exporter_child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={exporter_metrics}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (apt prometheus-node-exporter)");
    let exporter = Process {
        name: "node_exporter",
        child: exporter_child,
        metrics: exporter_metrics,
    };

    let both = [&agent, &exporter];
    for p in both {
        wait_for(p.name, || TcpStream::connect(p.metrics).is_ok());
    }
    // Warm-up: let the agent run its first checks; a few scrapes each.
    std::thread::sleep(Duration::from_secs(5));
    for p in both {
        for _ in 0..3 {
            scrape(p.metrics);
        }
    }
    let rss_warm: Vec<u64> = both.iter().map(|p| rss_kib(p.child.id())).collect();
    let cpu_start: Vec<f64> = both.iter().map(|p| cpu_seconds(p.child.id())).collect();
    eprintln!("measuring idle CPU for {seconds}s ...");
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu_used: Vec<f64> = both
        .iter()
        .zip(&cpu_start)
        .map(|(p, start)| cpu_seconds(p.child.id()) - start)
        .collect();
    let rss_idle: Vec<u64> = both.iter().map(|p| rss_kib(p.child.id())).collect();

    let cpu_before_scrapes: Vec<f64> = both.iter().map(|p| cpu_seconds(p.child.id())).collect();
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    let mut sizes = [0; 2];
    for _ in 0..SCRAPES {
        // Alternate so both see the same machine noise.
        for (i, p) in both.iter().enumerate() {
            let started = Instant::now();
            sizes[i] = scrape(p.metrics);
            latencies[i].push(started.elapsed());
        }
    }
    let rss_after: Vec<u64> = both.iter().map(|p| rss_kib(p.child.id())).collect();
    let cpu_scrapes: Vec<f64> = both
        .iter()
        .zip(&cpu_before_scrapes)
        .map(|(p, start)| cpu_seconds(p.child.id()) - start)
        .collect();

    println!(
        "\nfootprint over {seconds}s idle, {SCRAPES} sequential scrapes ({}):",
        if _coordinator.is_some() {
            "agent connected to a coordinator"
        } else {
            "no coordinator beside the agent binary; agent not connected"
        }
    );
    println!(
        "{:<16} {:>10} {:>10} {:>11} {:>10} {:>14} {:>11} {:>11} {:>8}",
        "",
        "RSS warm",
        "RSS idle",
        "RSS scraped",
        "CPU idle",
        "CPU/scrape",
        "scrape p50",
        "scrape p90",
        "body"
    );
    let sorted_of = |v: &[Duration]| {
        let mut sorted = v.to_vec();
        sorted.sort();
        sorted
    };
    for (i, p) in both.iter().enumerate() {
        let sorted = sorted_of(&latencies[i]);
        let pct = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "{:<16} {:>6.1} MiB {:>6.1} MiB {:>7.1} MiB {:>8.3} s {:>11.2} ms {:>8.2} ms {:>8.2} ms {:>4} KiB",
            p.name,
            rss_warm[i] as f64 / 1024.0,
            rss_idle[i] as f64 / 1024.0,
            rss_after[i] as f64 / 1024.0,
            cpu_used[i],
            cpu_scrapes[i] / SCRAPES as f64 * 1000.0,
            pct(0.5).as_secs_f64() * 1000.0,
            pct(0.9).as_secs_f64() * 1000.0,
            sizes[i] / 1024,
        );
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "n/a (node_exporter used no CPU)".to_string()
        }
    };
    let p50 = |i: usize| sorted_of(&latencies[i])[SCRAPES / 2].as_secs_f64();
    println!(
        "agent / node_exporter: RSS {}, idle CPU {}, CPU per scrape {}, scrape p50 {}",
        ratio(rss_idle[0] as f64, rss_idle[1] as f64),
        ratio(cpu_used[0], cpu_used[1]),
        ratio(cpu_scrapes[0], cpu_scrapes[1]),
        ratio(p50(0), p50(1)),
    );
}
