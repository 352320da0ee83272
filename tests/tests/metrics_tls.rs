//! `/metrics` over HTTPS, as a real Prometheus scrapes it: with
//! `[metrics.tls]` and a `client_ca`, the agent and the coordinator serve
//! only scrapers presenting a certificate from that CA; a scraper without
//! one, and plain HTTP, get nothing.
//!
//! Needs Debian's prometheus; recorded as skipped without it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use k3sfleet_pki::Role;
use k3sfleet_sim::skip::runnable;
use k3sfleet_tests::monitoring::{query, spawn_prometheus};
use k3sfleet_tests::process::AgentSpec;
use k3sfleet_tests::{AgentProcess, CoordinatorProcess, TestPki, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

fn tls_section(table: &str, pki: &TestPki) -> String {
    // The test CA's server certificate names 127.0.0.1.
    let server = pki.server();
    format!(
        "[{table}.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        server.cert.display(),
        server.key.display(),
        pki.ca_cert().display()
    )
}

/// The address a daemon wrote to `metrics-address` in `dir` once it listens.
fn metrics_address(dir: &Path) -> SocketAddr {
    let file = dir.join("metrics-address");
    wait_until("the metrics address to be written", TIMEOUT, || {
        file.exists()
    });
    std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A scrape job for `targets` over `scheme`, with `tls` as its `tls_config`.
fn job(name: &str, scheme: &str, tls: &str, targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "  - job_name: {name}\n    scheme: {scheme}\n    tls_config:\n{tls}    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

#[test]
fn prometheus_with_a_client_certificate_scrapes_both_daemons_over_tls_and_nobody_else_does() {
    if !runnable(k3sfleet_tests::monitoring::missing_tools()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(
        dir.path(),
        &pki,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            tls_section("metrics", &pki)
        ),
    );
    let mut spec = AgentSpec::new("worker-01", "agent");
    spec.extra_config = tls_section("metrics", &pki);
    let agent = AgentProcess::start(dir.path(), &pki, coordinator.addr, spec);
    let targets = [
        metrics_address(&agent.home.state_dir),
        metrics_address(&coordinator.data_dir),
    ];

    let scraper = pki.issue(Role::Reader, "prometheus");
    let ca = pki.ca_cert();
    let with_cert = format!(
        "      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
        ca.display(),
        scraper.cert.display(),
        scraper.key.display()
    );
    let without_cert = format!("      ca_file: {}\n", ca.display());
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}",
        job("with-cert", "https", &with_cert, &targets),
        job("without-cert", "https", &without_cert, &targets),
        job("plain-http", "http", &without_cert, &targets),
    );
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let (_prometheus, prometheus) = spawn_prometheus(&prometheus_dir, &config).unwrap();

    // Every job has scraped both targets at least once; only the one with a
    // certificate got anything.
    let up = |job: &str| -> Vec<String> {
        query(prometheus, &format!("up{{job=\"{job}\"}}"))
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["value"][1].as_str().map(str::to_string))
            .collect()
    };
    wait_until("every job to scrape both targets", TIMEOUT, || {
        ["with-cert", "without-cert", "plain-http"]
            .iter()
            .all(|job| up(job).len() == 2)
            && up("with-cert").iter().all(|v| v == "1")
    });
    assert_eq!(up("without-cert"), ["0", "0"]);
    assert_eq!(up("plain-http"), ["0", "0"]);
    let info = query(prometheus, "k3sfleet_agent_info{job=\"with-cert\"}").unwrap();
    assert_eq!(info.len(), 1, "{info:?}");
    let connected = query(prometheus, "k3sfleet_agents_connected{job=\"with-cert\"}").unwrap();
    assert_eq!(connected.len(), 1, "the coordinator's: {connected:?}");
}
