//! Network faults as real network events: the coordinator and two racks of
//! simulated agents (`k3sfleet-loadgen run`), each in its own network
//! namespace with its own address, cabled to one switch. Cutting a cable
//! drops packets silently, as when a host falls off the network.
//!
//! Needs root (network namespaces) and the binaries built (`cargo build
//! --bins`); is recorded as skipped otherwise (k3sfleet_sim::skip).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k3sfleet_sim::load::harness::LoadCoordinator;
use k3sfleet_sim::netns::{NetHost, NetLab, unavailable_reason};
use k3sfleet_sim::process::{Process, binary};

const PER_RACK: usize = 5;
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn hosts_cut_off_go_unreachable_and_come_back_and_a_cut_off_coordinator_loses_then_regains_everyone()
 {
    if !k3sfleet_sim::skip::runnable(unavailable_reason()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = NetLab::create().unwrap();
    let coordinator_host = net.add_host("coordinator", 1).unwrap();
    let racks = [
        net.add_host("rack-a", 11).unwrap(),
        net.add_host("rack-b", 12).unwrap(),
    ];
    let coordinator =
        LoadCoordinator::start_on(&dir.path().join("coordinator"), "", Some(coordinator_host))
            .unwrap();
    let _agents: Vec<Process> = racks
        .iter()
        .map(|rack| start_rack(&coordinator, rack, dir.path()))
        .collect();

    let everyone_connected = |states: &HashMap<String, String>| {
        states.len() == 2 * PER_RACK && states.values().all(|s| s == "CONNECTIVITY_CONNECTED")
    };
    wait_until(&coordinator, "every agent connected", everyone_connected);

    // Rack A drops off the network: its nodes go unreachable (three missed
    // reports), rack B is untouched.
    net.cut("rack-a").unwrap();
    wait_until(
        &coordinator,
        "rack A unreachable, rack B connected",
        |states| {
            states.iter().all(|(name, state)| {
                if name.starts_with("rack-a-") {
                    state != "CONNECTIVITY_CONNECTED"
                } else {
                    state == "CONNECTIVITY_CONNECTED"
                }
            }) && states.len() == 2 * PER_RACK
        },
    );
    net.heal("rack-a").unwrap();
    wait_until(
        &coordinator,
        "rack A back after healing",
        everyone_connected,
    );

    // The coordinator drops off for longer than the keepalive timeout: every
    // session is given up (disconnected, not merely unreachable)...
    net.cut("coordinator").unwrap();
    wait_until(&coordinator, "every session given up", |states| {
        states.len() == 2 * PER_RACK && states.values().all(|s| s == "CONNECTIVITY_DISCONNECTED")
    });
    // ...and every agent is back once it returns.
    net.heal("coordinator").unwrap();
    wait_until(&coordinator, "everyone back", everyone_connected);
}

fn start_rack(coordinator: &LoadCoordinator, rack: &NetHost, dir: &std::path::Path) -> Process {
    let (ca, ca_key) = coordinator.ca_files();
    let mut command = rack.command(binary("k3sfleet-loadgen").unwrap());
    command
        .args(["run", "--coordinator", &coordinator.addr.to_string()])
        .arg("--ca")
        .arg(ca)
        .arg("--ca-key")
        .arg(ca_key)
        .args(["--agents", &PER_RACK.to_string()])
        .args(["--prefix", &format!("{}-", rack.name)])
        .args([
            "--interval",
            "1s",
            "--ramp",
            "0s",
            "--max-reconnect-delay",
            "2s",
        ]);
    Process::spawn(&rack.name, command, &dir.join(format!("{}.log", rack.name))).unwrap()
}

/// Polls `k3sfleet nodes -o json` until `done` holds for node → connectivity.
fn wait_until(
    coordinator: &LoadCoordinator,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (nodes, _) = coordinator.nodes_json().unwrap();
        let states: HashMap<String, String> = nodes
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["connectivity"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if done(&states) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
