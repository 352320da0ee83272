//! The load generator against a real coordinator, at a size a test can afford:
//! 200 simulated agents, each with its own certificate and mTLS stream, all
//! listed by `k3sfleet nodes`, answering commands, and all back after the
//! coordinator restarts (SIGTERM) and crashes (SIGKILL).
//!
//! Needs the binaries built (`cargo build --bins`, as scripts/test.sh does).

use std::time::{Duration, Instant};

use k3sfleet_proto::v1::admin_service_client::AdminServiceClient;
use k3sfleet_proto::v1::{
    ArtifactSource, Command, CommandOutcome, InstallK3s, RunCommandRequest, artifact_source,
    command, command_event, command_result,
};
use k3sfleet_sim::load::harness::{LoadCoordinator, connected_nodes};
use k3sfleet_sim::load::{LoadFleet, LoadSpec, agent_names, issue_agents};

const AGENTS: usize = 200;
/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_are_listed_answer_commands_and_come_back_after_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = LoadCoordinator::start(dir.path(), "").unwrap();
    let issued = issue_agents(
        &coordinator.ca,
        &agent_names("load-", AGENTS),
        Duration::from_secs(3600),
    )
    .unwrap();
    let fleet = LoadFleet::start(LoadSpec {
        target: coordinator.target(2).unwrap(),
        identities: issued.identities,
        interval: Duration::from_secs(1),
        max_reconnect_delay: Duration::from_secs(2),
        k3s_version: "v1.31.4+k3s1".into(),
        ramp: Duration::from_secs(1),
        probes: 1,
    });

    assert!(
        fleet.wait_all_connected(WAIT).await.is_some(),
        "not all agents connected: {:?}",
        fleet.stats().snapshot()
    );
    wait_listed_connected(&coordinator, &fleet).await;

    // A command reaches the right agent and its answer comes back.
    let node = fleet.names()[17].clone();
    let result = run_install(&coordinator, &node, "v1.31.5+k3s1").await;
    assert_eq!(
        result.outcome,
        CommandOutcome::Succeeded as i32,
        "{result:?}"
    );
    match result.detail {
        Some(command_result::Detail::InstallK3s(install)) => {
            assert_eq!(install.installed_version, "v1.31.5+k3s1");
            assert_eq!(install.previous_version, "v1.31.4+k3s1");
        }
        other => panic!("expected an install result, got {other:?}"),
    }
    // ...and its next report shows the new version.
    wait_for(|| {
        let (nodes, _) = coordinator.nodes_json().unwrap();
        nodes
            .iter()
            .any(|n| n["name"] == node.as_str() && n["k3sVersion"] == "v1.31.5+k3s1")
    })
    .await;

    for crash in [false, true] {
        let sessions_before = fleet.stats().snapshot().sessions;
        coordinator.stop(crash);
        coordinator.start_again().unwrap();
        assert!(
            fleet.wait_all_connected(WAIT).await.is_some(),
            "not all agents reconnected (crash: {crash}): {:?}",
            fleet.stats().snapshot()
        );
        let sessions_after = fleet.stats().snapshot().sessions;
        assert!(
            sessions_after >= sessions_before + AGENTS as u64,
            "every agent opened a new session (crash: {crash}): {sessions_before} -> {sessions_after}"
        );
        wait_listed_connected(&coordinator, &fleet).await;
    }

    fleet.stop().await;
    coordinator.stop(false);
}

/// Waits until `k3sfleet nodes -o json` lists every agent as connected.
async fn wait_listed_connected(coordinator: &LoadCoordinator, fleet: &LoadFleet) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (nodes, _) = coordinator.nodes_json().unwrap();
        let names: std::collections::HashSet<&str> =
            nodes.iter().filter_map(|n| n["name"].as_str()).collect();
        if connected_nodes(&nodes) == AGENTS
            && fleet
                .names()
                .iter()
                .all(|name| names.contains(name.as_str()))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "k3sfleet nodes lists {} connected of {AGENTS}",
            connected_nodes(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run_install(
    coordinator: &LoadCoordinator,
    node: &str,
    version: &str,
) -> k3sfleet_proto::v1::CommandResult {
    let mut client = AdminServiceClient::new(coordinator.admin_channel().await.unwrap());
    let mut events = client
        .run_command(RunCommandRequest {
            node: node.to_string(),
            command: Some(Command {
                id: String::new(),
                action: Some(command::Action::InstallK3s(InstallK3s {
                    version: version.to_string(),
                    source: Some(ArtifactSource {
                        kind: Some(artifact_source::Kind::Coordinator(Default::default())),
                    }),
                    health_timeout_seconds: 0,
                })),
            }),
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(event) = events.message().await.unwrap() {
        if let Some(command_event::Event::Result(result)) = event.event {
            return result;
        }
    }
    panic!("the command stream ended without a result");
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
