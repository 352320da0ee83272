//! The seed's monitoring stack against a lab fleet, every part real:
//! Prometheus and vmagent (into VictoriaMetrics) scrape the agents and the
//! coordinator with the packaged scrape configs; Prometheus and vmalert
//! evaluate the packaged alert rules and send to Alertmanagers whose webhook
//! is this test's. Faults are real ones in the lab (an agent killed, a
//! failing K3s unit, a full disk, a short-lived certificate, a release that
//! fails, a node left cordoned). The rules run with their time parameters
//! divided by [`TIME_SCALE`] (tests/src/monitoring.rs, `scale_rules`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k3sfleet_coordinator::rollout::alerts::DEFAULT_IGNORE;
use k3sfleet_pki::{ClientCertRequest, FleetCa, Role};
use k3sfleet_sim::lab::{Lab, LabSpec};
use k3sfleet_sim::skip::runnable;
use k3sfleet_tests::monitoring::{
    FROM_PROMETHEUS, FROM_VMALERT, Stack, StackSpec, Targets, Webhook, active_targets,
    firing_alerts, missing_tools, packaged, query, query_range, versions,
};
use k3sfleet_tests::rollout::{
    assert_completes_clean, cli, lab_dir, phase, small_lab, start, wait_for_rollout,
};
use k3sfleet_tests::small_disk::SmallDisk;

/// The alert tests' clock runs this much faster: scrapes every 0.5 s, a
/// `for: 5m` of 5 s, a node cordoned "for an hour" after 60 s.
const TIME_SCALE: u32 = 60;
const SOURCES: [&str; 2] = [FROM_PROMETHEUS, FROM_VMALERT];

/// Each agent's /metrics address, pinned in its config so that a restarted
/// agent serves on the same port (its scrape target).
fn pin_agent_metrics(lab: &Lab) -> Vec<(String, SocketAddr)> {
    lab.hosts
        .iter()
        .map(|host| {
            let home = host.config.parent().unwrap();
            let address = std::fs::read_to_string(home.join("state/metrics-address")).unwrap();
            let address: SocketAddr = address.trim().parse().unwrap();
            let config = std::fs::read_to_string(&host.config).unwrap();
            let pinned = config.replace(
                "[metrics]\nlisten = \"127.0.0.1:0\"",
                &format!("[metrics]\nlisten = \"{address}\""),
            );
            assert_ne!(config, pinned, "{}: no [metrics] listen to pin", host.name);
            std::fs::write(&host.config, pinned).unwrap();
            (host.name.clone(), address)
        })
        .collect()
}

fn coordinator_metrics(lab: &Lab) -> SocketAddr {
    let path = lab.dir.join("coordinator-data/metrics-address");
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a stack on `lab`; returns it with the agents' addresses by node.
fn stack_for(
    lab: &Lab,
    dir: &Path,
    time_scale: u32,
    alerting: Option<&Webhook>,
) -> (Stack, Vec<(String, SocketAddr)>) {
    let agents = pin_agent_metrics(lab);
    let addresses: Vec<SocketAddr> = agents.iter().map(|(_, a)| *a).collect();
    let agents_file = dir.join("k3sfleet-agents.yml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&agents_file, "[]\n").unwrap();
    let stack = Stack::start(&StackSpec {
        dir,
        targets: Targets {
            agents: &addresses,
            coordinator: coordinator_metrics(lab),
            agents_file: &agents_file,
        },
        time_scale,
        alerting,
    })
    .unwrap();
    (stack, agents)
}

/// Waits until both Prometheus and vmagent list every agent and the
/// coordinator as an up target, and nothing else; returns how long it took.
fn wait_all_up(stack: &mut Stack, agents: &[(String, SocketAddr)], lab: &Lab) -> Duration {
    let mut expected: BTreeSet<(String, String)> = agents
        .iter()
        .map(|(_, a)| ("k3sfleet-agent".to_string(), a.to_string()))
        .collect();
    expected.insert((
        "k3sfleet-coordinator".into(),
        coordinator_metrics(lab).to_string(),
    ));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    for (scraper, addr) in [("prometheus", stack.prometheus), ("vmagent", stack.vmagent)] {
        loop {
            stack.check_running().unwrap();
            let targets = active_targets(addr).unwrap_or_default();
            let listed: BTreeSet<(String, String)> = targets
                .iter()
                .map(|(job, address, _)| (job.clone(), address.clone()))
                .collect();
            let all_up = targets.iter().all(|(_, _, health)| health == "up");
            if listed == expected && all_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{scraper}: targets {targets:?}, expected every one of {expected:?} up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_scrape_configs_scrape_every_agent_and_the_coordinator() {
    if !runnable(missing_tools()) {
        return;
    }
    let dir = lab_dir();
    // The demo fleet: 18 nodes.
    let lab = small_lab(&dir, LabSpec::demo().unwrap()).await;
    let (mut stack, agents) =
        tokio::task::block_in_place(|| stack_for(&lab, &dir.path().join("monitoring"), 1, None));
    let took = tokio::task::block_in_place(|| wait_all_up(&mut stack, &agents, &lab));
    eprintln!(
        "every target up in Prometheus and vmagent after {took:.1?}; {}",
        versions().join("; ")
    );
    // What they scraped is what the rules and dashboard read, in both stores.
    let expected = agents.len() + 1;
    for (store, addr) in [
        ("Prometheus", stack.prometheus),
        ("VictoriaMetrics", stack.victoria_metrics),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = tokio::task::block_in_place(|| {
                query(addr, "up{job=~\"k3sfleet-.*\"} == 1").unwrap()
            });
            let agents_info =
                tokio::task::block_in_place(|| query(addr, "count(k3sfleet_agent_info)").unwrap());
            let count = agents_info
                .first()
                .and_then(|s| s["value"][1].as_str())
                .unwrap_or_default()
                .to_string();
            if up.len() == expected && count == agents.len().to_string() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{store}: up {up:?}, k3sfleet_agent_info count {count:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Cardinality as stored: series per scrape target (the agent's own, and
    // the scrape's up and scrape_* series).
    let per_target = tokio::task::block_in_place(|| {
        query(
            stack.prometheus,
            "count by (job, instance) ({job=~\"k3sfleet-.*\"})",
        )
        .unwrap()
    });
    let count = |s: &serde_json::Value| -> usize {
        s["value"][1]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    };
    let agent_counts: Vec<usize> = per_target
        .iter()
        .filter(|s| s["metric"]["job"] == "k3sfleet-agent")
        .map(count)
        .collect();
    let coordinator_count: usize = per_target
        .iter()
        .filter(|s| s["metric"]["job"] == "k3sfleet-coordinator")
        .map(count)
        .sum();
    assert_eq!(agent_counts.len(), agents.len());
    eprintln!(
        "series stored at {} nodes: per agent {}..{}, coordinator {coordinator_count}",
        agents.len(),
        agent_counts.iter().min().unwrap(),
        agent_counts.iter().max().unwrap(),
    );
    drop(stack);
    lab.shutdown().await;
}

/// A fault injected on a node, and the alert it must raise.
struct Fault {
    alert: &'static str,
    labels: Vec<(&'static str, String)>,
    injected: Instant,
}

fn wait_alert(
    webhook: &Webhook,
    fault: &Fault,
    status: &str,
    since: Instant,
    timeout: Duration,
) -> Vec<Duration> {
    let labels: Vec<(&str, &str)> = fault.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    SOURCES
        .iter()
        .map(|source| {
            webhook
                .wait_for(source, status, fault.alert, &labels, since, timeout)
                .unwrap()
                .duration_since(since)
        })
        .collect()
}

/// Waits until the last notification about `fault`'s alert from every rule
/// engine says it fires.
fn still_firing(webhook: &Webhook, fault: &Fault, timeout: Duration) {
    let labels: Vec<(&str, &str)> = fault.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for source in SOURCES {
        k3sfleet_tests::wait_until(
            &format!("{} to fire again via {source}", fault.alert),
            timeout,
            || webhook.latest(source, fault.alert, &labels).as_deref() == Some("firing"),
        );
    }
}

fn report(fault: &Fault, status: &str, took: &[Duration]) {
    eprintln!(
        "{} {status}: {:.1?} via Prometheus, {:.1?} via vmalert",
        fault.alert, took[0], took[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_rules_fire_and_resolve_for_real_faults_in_both_rule_engines() {
    if !runnable(missing_tools()) {
        return;
    }
    if !runnable((!is_root()).then(|| "a full disk is a tmpfs: mounting needs root".to_string())) {
        return;
    }
    let failing = "v1.31.9+k3s1";
    let dir = lab_dir();
    let mut spec = LabSpec::small().unwrap();
    spec.failing_versions = vec![failing.into()];
    let mut lab = small_lab(&dir, spec).await;
    let webhook = Webhook::start();
    let (mut stack, agents) = tokio::task::block_in_place(|| {
        stack_for(
            &lab,
            &dir.path().join("monitoring"),
            TIME_SCALE,
            Some(&webhook),
        )
    });
    tokio::task::block_in_place(|| wait_all_up(&mut stack, &agents, &lab));
    let instance = |node: &str| {
        agents
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, a)| a.to_string())
            .unwrap()
    };
    let timeout = Duration::from_secs(60);

    // Four faults on four hosts at once.
    let home = |lab: &mut Lab, node: &str| lab.host(node).config.parent().unwrap().to_owned();
    let down = Fault {
        alert: "K3sfleetAgentDown",
        labels: vec![("instance", instance("worker-01"))],
        injected: Instant::now(),
    };
    lab.host("worker-01").agent.kill();

    let check = Fault {
        alert: "K3sfleetCheckFailing",
        labels: vec![("instance", instance("worker-02"))],
        injected: Instant::now(),
    };
    lab.host("worker-02")
        .host
        .set_unit("k3s-agent.service", "failed")
        .unwrap();

    const MIB: u64 = 1024 * 1024;
    let longhorn = lab.host("worker-03").host.path("/var/lib/longhorn");
    std::fs::create_dir_all(&longhorn).unwrap();
    let disk = SmallDisk::mount_over(&longhorn, 8 * MIB).unwrap();
    let disk_fault = Fault {
        alert: "K3sfleetDiskCritical",
        labels: vec![
            ("instance", instance("worker-03")),
            ("path", "/var/lib/longhorn".into()),
        ],
        injected: Instant::now(),
    };
    std::fs::write(
        longhorn.join("replica.img"),
        vec![0u8; (15 * MIB / 2) as usize],
    )
    .unwrap();

    // A certificate with 10 minutes left (under a day, scaled: 24 min).
    let cert_home = home(&mut lab, "server-3");
    let (ca_cert, _, _) = lab.admin_credentials();
    let ca = FleetCa::load(&ca_cert, &ca_cert.with_file_name("ca.key")).unwrap();
    let kept_cert = std::fs::read_to_string(cert_home.join("agent.crt")).unwrap();
    let kept_key = std::fs::read_to_string(cert_home.join("agent.key")).unwrap();
    let short = ca
        .issue_client(&ClientCertRequest {
            name: "server-3".into(),
            role: Role::Agent,
            k3s_role: None,
            validity: Duration::from_secs(600),
        })
        .unwrap();
    let cert = Fault {
        alert: "K3sfleetAgentCertificateExpiring",
        labels: vec![
            ("instance", instance("server-3")),
            ("severity", "critical".into()),
        ],
        injected: Instant::now(),
    };
    std::fs::write(cert_home.join("agent.crt"), &short.cert_pem).unwrap();
    std::fs::write(
        cert_home.join("agent.key"),
        short.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    tokio::task::block_in_place(|| lab.host("server-3").restart_agent()).unwrap();

    let faults = [&down, &check, &disk_fault, &cert];
    tokio::task::block_in_place(|| {
        for fault in faults {
            report(
                fault,
                "fired",
                &wait_alert(&webhook, fault, "firing", fault.injected, timeout),
            );
        }
    });
    stack.check_running().unwrap();
    // On a loaded machine a late scrape can resolve an alert before its fault
    // is put right (its series missed an evaluation); it fires again soon
    // after. Only faults whose alerts fire now are put right, or the
    // "resolved" awaited below could be such a flap's.
    tokio::task::block_in_place(|| {
        for fault in faults {
            still_firing(&webhook, fault, timeout);
        }
    });

    // Each put right.
    let fixed = Instant::now();
    tokio::task::block_in_place(|| {
        lab.host("worker-01").restart_agent().unwrap();
        lab.host("worker-02")
            .host
            .set_unit("k3s-agent.service", "active")
            .unwrap();
        disk.resize(64 * MIB).unwrap();
        std::fs::write(cert_home.join("agent.crt"), &kept_cert).unwrap();
        std::fs::write(cert_home.join("agent.key"), &kept_key).unwrap();
        lab.host("server-3").restart_agent().unwrap();
        for fault in faults {
            report(
                fault,
                "resolved",
                &wait_alert(&webhook, fault, "resolved", fixed, timeout),
            );
        }
    });

    // A release that fails to start: the node fails, the rollout pauses and
    // the node stays cordoned, waiting for the operator.
    start(&lab, failing, &["--max-unavailable", "1"]);
    let paused_at = Instant::now();
    let status = wait_for_rollout(
        &lab,
        "the rollout to pause",
        Duration::from_secs(120),
        |s| phase(s) == "paused",
    );
    let rollout = status["id"].as_str().unwrap_or_default().to_string();
    let cordoned = tokio::task::block_in_place(|| lab.cordoned_nodes());
    assert_eq!(cordoned.len(), 1, "{cordoned:?} {status:#}");
    let paused = Fault {
        alert: "K3sfleetRolloutPaused",
        labels: vec![],
        injected: paused_at,
    };
    let stuck = Fault {
        alert: "K3sfleetNodeStuckCordoned",
        labels: vec![("node", cordoned[0].clone())],
        injected: paused_at,
    };
    tokio::task::block_in_place(|| {
        for fault in [&paused, &stuck] {
            report(
                fault,
                "fired",
                &wait_alert(
                    &webhook,
                    fault,
                    "firing",
                    fault.injected,
                    Duration::from_secs(120),
                ),
            );
        }
    });
    eprintln!("rollout {rollout} paused, {} left cordoned", cordoned[0]);

    let fixed = Instant::now();
    cli(&lab, &["upgrade", "abort"]);
    // Until the abort has taken effect the node is still the rollout's, and
    // uncordon refuses it.
    wait_for_rollout(
        &lab,
        "the abort to take effect",
        Duration::from_secs(60),
        |s| phase(s) == "aborted",
    );
    cli(&lab, &["uncordon", &cordoned[0]]);
    tokio::task::block_in_place(|| {
        for fault in [&paused, &stuck] {
            report(
                fault,
                "resolved",
                &wait_alert(&webhook, fault, "resolved", fixed, timeout),
            );
        }
    });
    stack.check_running().unwrap();
    drop(stack);
    lab.shutdown().await;
    drop(disk);
}

/// The dashboard's queries as Grafana sends them: its variables replaced by
/// what "All" means, `$__rate_interval` by a window of several scrapes.
fn dashboard_queries() -> Vec<(String, Vec<String>)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&packaged("grafana/k3sfleet-fleet.json")).unwrap();
    // Its data source is a variable (the one Grafana asks for on import),
    // and every query uses it.
    assert!(
        dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "the dashboard has no datasource variable"
    );
    let mut uids = Vec::new();
    collect_datasource_uids(&dashboard, &mut uids);
    assert!(!uids.is_empty());
    assert!(
        uids.iter().all(|uid| uid == "${datasource}"),
        "data sources not the variable: {uids:?}"
    );
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let exprs = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str())
                .map(|expr| {
                    expr.replace("$__rate_interval", "1m")
                        .replace("$instance", ".*")
                        .replace("$rollout", ".*")
                })
                .collect();
            (panel["title"].as_str().unwrap().to_string(), exprs)
        })
        .collect()
}

fn collect_datasource_uids(value: &serde_json::Value, uids: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(datasource) = map.get("datasource") {
                uids.push(datasource["uid"].as_str().unwrap_or("<none>").to_string());
            }
            map.values().for_each(|v| collect_datasource_uids(v, uids));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| collect_datasource_uids(v, uids))
        }
        _ => {}
    }
}

/// Panels a healthy fleet that has done a clean rollout leaves empty, and why.
const EMPTY_WHEN_HEALTHY: [(&str, &str); 1] = [(
    "Failing and warning checks",
    "every check of the lab's hosts is ok",
)];

/// What the gate ignores: the rollout's defaults, and the disk alerts, which
/// here tell of the machine running the tests (the lab's hosts watch its
/// disk), not of the lab.
const IGNORED: [&str; DEFAULT_IGNORE.len() + 1] = {
    let mut patterns = [r"^K3sfleetDisk(Low|Critical)$"; DEFAULT_IGNORE.len() + 1];
    let mut i = 0;
    while i < DEFAULT_IGNORE.len() {
        patterns[i] = DEFAULT_IGNORE[i];
        i += 1;
    }
    patterns
};

/// Kills `node`'s agent and waits until the alerting engine behind `store`
/// (what the gate asks) lists K3sfleetAgentDown firing.
fn agent_down_in(lab: &mut Lab, node: &str, store: SocketAddr) {
    lab.host(node).agent.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !firing_alerts(store)
        .unwrap_or_default()
        .iter()
        .any(|name| name == "K3sfleetAgentDown")
    {
        assert!(
            Instant::now() < deadline,
            "K3sfleetAgentDown never fired in {store}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_gate_reads_both_stores_and_every_dashboard_panel_answers_after_rollouts() {
    if !runnable(missing_tools()) {
        return;
    }
    let began = Instant::now();
    let dir = lab_dir();
    let mut lab = small_lab(&dir, LabSpec::small().unwrap()).await;
    let webhook = Webhook::start();
    let (mut stack, agents) = tokio::task::block_in_place(|| {
        stack_for(
            &lab,
            &dir.path().join("monitoring"),
            TIME_SCALE,
            Some(&webhook),
        )
    });
    tokio::task::block_in_place(|| wait_all_up(&mut stack, &agents, &lab));

    // One rollout gated on Prometheus, the next on VictoriaMetrics (which
    // answers the alerting API from vmalert): an agent down holds the
    // rollout and pauses it, naming the alert; once it is back, the rollout
    // completes.
    let second = "v1.31.6+k3s1";
    k3sfleet_standin::write_release(
        &lab.artifacts,
        second,
        &k3sfleet_standin::k3s_binary(
            second,
            k3sfleet_standin::K3sBehaviour::Healthy,
            lab.spec.binary_size,
        ),
    )
    .unwrap();
    let to = lab.spec.to_version.clone();
    for (store, addr, version) in [
        ("Prometheus", stack.prometheus, to.as_str()),
        ("VictoriaMetrics", stack.victoria_metrics, second),
    ] {
        let started = Instant::now();
        tokio::task::block_in_place(|| agent_down_in(&mut lab, "worker-01", addr));
        let url = format!("http://{addr}");
        let mut options = vec!["--alerts-url", &url, "--alerts-hold-timeout", "3s"];
        for pattern in IGNORED {
            options.extend(["--alerts-ignore", pattern]);
        }
        start(&lab, version, &options);
        let status = wait_for_rollout(
            &lab,
            "the alert to pause the rollout",
            Duration::from_secs(120),
            |s| phase(s) == "paused",
        );
        let reason = status["pauseReason"].as_str().unwrap_or_default();
        assert!(reason.contains("K3sfleetAgentDown"), "{store}: {status:#}");
        eprintln!(
            "{store} gate: paused by K3sfleetAgentDown {:.1?} after the kill",
            started.elapsed()
        );
        tokio::task::block_in_place(|| {
            lab.host("worker-01").restart_agent().unwrap();
            // Generous: on a loaded machine the scrapes, the rule
            // evaluations and vmalert's writes of ALERTS all run late.
            let deadline = Instant::now() + Duration::from_secs(120);
            // Every alert the agent's absence raised (down, then its
            // session gone) resolved; the rollout's own are ignored.
            let counting = |addr| {
                firing_alerts(addr).map(|names| {
                    names
                        .into_iter()
                        .filter(|n| n == "K3sfleetAgentDown" || n == "K3sfleetNodeDisconnected")
                        .collect::<Vec<_>>()
                })
            };
            while counting(addr).map(|r| !r.is_empty()).unwrap_or(true) {
                assert!(
                    Instant::now() < deadline,
                    "{store}: still firing: {:?}; up of the agents: {:?}",
                    counting(addr),
                    query(addr, "up{job=\"k3sfleet-agent\"}"),
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            lab.wait_for_agents(Duration::from_secs(60)).unwrap();
        });
        cli(&lab, &["upgrade", "resume"]);
        assert_completes_clean(&lab, version);
        eprintln!(
            "{store} gate: rollout to {version} completed {:.1?} after the kill",
            started.elapsed()
        );
    }

    // Every panel's queries, in both stores, over the time of the rollouts.
    let range = began.elapsed() + Duration::from_secs(10);
    let mut empty = Vec::new();
    for (store, addr) in [
        ("Prometheus", stack.prometheus),
        ("VictoriaMetrics", stack.victoria_metrics),
    ] {
        for (title, exprs) in dashboard_queries() {
            let mut has_data = false;
            for expr in &exprs {
                let series = tokio::task::block_in_place(|| {
                    query_range(addr, expr, range, Duration::from_secs(2))
                })
                .unwrap_or_else(|err| panic!("{store}, panel {title:?}: {err}"));
                has_data |= !series.is_empty();
            }
            let may_be_empty = EMPTY_WHEN_HEALTHY.iter().any(|(t, _)| *t == title);
            if !has_data && !may_be_empty {
                empty.push(format!("{store}: {title:?} {exprs:?}"));
            }
            eprintln!(
                "{store}: panel {title:?}: {}",
                if has_data { "data" } else { "empty" }
            );
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n  {}",
        empty.join("\n  ")
    );
    stack.check_running().unwrap();
    drop(stack);
    lab.shutdown().await;
}
