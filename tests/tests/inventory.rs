//! A real coordinator and real agent processes over mutual TLS on loopback:
//! registration, the inventory the CLI prints, liveness, and restarts.

use std::time::Duration;

use k3sfleet_pki::Role;
use k3sfleet_tests::process::AgentSpec;
use k3sfleet_tests::{AgentProcess, Cli, CoordinatorProcess, TestPki, wait_until};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

struct Fleet {
    _dir: tempfile::TempDir,
    coordinator: CoordinatorProcess,
    agents: Vec<AgentProcess>,
    cli: Cli,
}

fn fleet_of_three() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let agents = [
        ("server-1", "server"),
        ("worker-01", "agent"),
        ("worker-02", "agent"),
    ]
    .into_iter()
    .map(|(name, role)| {
        AgentProcess::start(
            dir.path(),
            &pki,
            coordinator.addr,
            AgentSpec::new(name, role),
        )
    })
    .collect();
    let cli = Cli::new(&pki, coordinator.addr, pki.issue(Role::Admin, "alice"));
    let fleet = Fleet {
        _dir: dir,
        coordinator,
        agents,
        cli,
    };
    wait_until("three connected, reporting nodes", TIMEOUT, || {
        connected_and_reporting(&fleet.cli) == 3
    });
    fleet
}

fn connected_and_reporting(cli: &Cli) -> usize {
    cli.nodes()
        .iter()
        .filter(|n| {
            n["connectivity"] == "CONNECTIVITY_CONNECTED" && n.get("lastReportUnixMs").is_some()
        })
        .count()
}

#[test]
fn agents_register_and_appear_in_the_inventory() {
    let fleet = fleet_of_three();
    let nodes = fleet.cli.nodes();
    let summary: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("server-1".to_string(), "NODE_ROLE_SERVER".to_string()),
            ("worker-01".to_string(), "NODE_ROLE_AGENT".to_string()),
            ("worker-02".to_string(), "NODE_ROLE_AGENT".to_string()),
        ]
    );
    for node in &nodes {
        assert_eq!(node["agentVersion"], env!("CARGO_PKG_VERSION"), "{node}");
        assert!(
            node["lastReportAgeMs"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                >= 0
        );
    }

    let table = fleet.cli.ok(&["nodes"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    let worker = lines
        .find(|l| l.starts_with("worker-01"))
        .expect("worker-01 listed");
    assert!(
        worker.contains("agent") && worker.contains("yes"),
        "{worker}"
    );

    let show = fleet.cli.ok(&["node", "show", "worker-01"]);
    assert!(show.contains("Role:        agent"), "{show}");
    assert!(
        show.contains("Host:"),
        "the latest report is shown:\n{show}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fleet.cli.ok(&["node", "show", "server-1", "-o", "json"])).unwrap();
    assert_eq!(json["lastHello"]["nodeName"], "server-1");
    assert!(json["lastReport"]["host"]["memoryTotalBytes"].is_string());

    let missing = fleet.cli.run(&["node", "show", "worker-99"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("worker-99"));
}

#[test]
fn a_silent_agent_becomes_unreachable_then_comes_back() {
    let fleet = fleet_of_three();
    let worker = &fleet.agents[1];
    worker.daemon.signal(Signal::SIGSTOP);
    wait_until("worker-01 to show as unreachable", TIMEOUT, || {
        fleet.cli.node("worker-01").unwrap()["connectivity"] == "CONNECTIVITY_UNREACHABLE"
    });
    assert!(
        fleet
            .cli
            .ok(&["nodes"])
            .lines()
            .any(|l| l.starts_with("worker-01") && l.contains("unreachable"))
    );
    worker.daemon.signal(Signal::SIGCONT);
    wait_until("worker-01 to report again", TIMEOUT, || {
        fleet.cli.node("worker-01").unwrap()["connectivity"] == "CONNECTIVITY_CONNECTED"
    });
}

#[test]
fn a_stopped_agent_shows_as_disconnected() {
    let mut fleet = fleet_of_three();
    assert_eq!(
        fleet.agents[2].daemon.stop(),
        Some(0),
        "the agent exits cleanly on SIGTERM"
    );
    wait_until("worker-02 to show as disconnected", TIMEOUT, || {
        fleet.cli.node("worker-02").unwrap()["connectivity"] == "CONNECTIVITY_DISCONNECTED"
    });
    // The node stays in the inventory.
    assert_eq!(fleet.cli.nodes().len(), 3);
}

#[test]
fn agents_reconnect_after_a_coordinator_restart_and_the_registry_survives() {
    let mut fleet = fleet_of_three();
    let before = fleet.cli.nodes();

    fleet.coordinator.restart();
    wait_until("all agents back after a clean restart", TIMEOUT, || {
        connected_and_reporting(&fleet.cli) == 3
    });

    fleet.coordinator.restart_after_kill();
    // Right after a crash the registry is already there, from the database.
    let after_crash = fleet.cli.nodes();
    assert_eq!(after_crash.len(), 3, "{after_crash:?}");
    wait_until("all agents back after a crash", TIMEOUT, || {
        connected_and_reporting(&fleet.cli) == 3
    });

    for (old, new) in before.iter().zip(fleet.cli.nodes()) {
        assert_eq!(old["name"], new["name"]);
        assert_eq!(
            old["firstSeenUnixMs"], new["firstSeenUnixMs"],
            "first seen is kept"
        );
        let (old_seen, new_seen): (i64, i64) = (
            old["lastSeenUnixMs"].as_str().unwrap().parse().unwrap(),
            new["lastSeenUnixMs"].as_str().unwrap().parse().unwrap(),
        );
        assert!(new_seen > old_seen, "last seen moves on");
    }
    let log = fleet.coordinator.daemon.log();
    assert!(log.matches("coordinator listening").count() >= 3, "{log}");
}
