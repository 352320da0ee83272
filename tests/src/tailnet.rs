//! The tailnet tests' world: a small lab in network namespaces (the
//! coordinator's host and a few nodes, kubesim for the cluster), Headscale
//! on the coordinator's host, tailscaled on every host, and each node's
//! real agent driving the real `tailscale` CLI through its socket.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k3sfleet_sim::lab::{Lab, LabSpec, Network};
use k3sfleet_sim::tailnet::{KeyOptions, PreAuthKey, Tailnet};
use serde_json::Value;

use crate::rollout::lab_dir;

/// One server and two workers, no workloads: the tests are about the hosts.
const SCENARIO: &str = r#"
[cluster]
time_scale = 10.0
seed = 13

[[nodes]]
name = "server-1"
role = "server"

[[nodes]]
name = "worker-01"

[[nodes]]
name = "worker-02"
"#;

/// The `[host.tailscale]` keys every agent gets unless a test says more:
/// the lab's Headscale speaks plain HTTP on the lab network.
pub const LAB_SETTINGS: &str = "allow_http_login_server = true\nup_timeout = \"20s\"\n";

pub struct World {
    /// Dropped last (a kept lab stays for a look).
    pub tailnet: Tailnet,
    pub lab: Lab,
    _dir: tempfile::TempDir,
}

impl World {
    /// The world, or `None` once the test is recorded as skipped (no root,
    /// no /dev/net/tun, the tailnet's binaries not built).
    pub async fn start(settings: impl Fn(&str) -> String) -> Option<World> {
        if !k3sfleet_sim::skip::runnable(k3sfleet_sim::tailnet::unavailable_reason()) {
            return None;
        }
        let started = Instant::now();
        let dir = lab_dir();
        let mut spec = LabSpec::new(SCENARIO, "tests/src/tailnet.rs").unwrap();
        spec.network = Network::Namespaces;
        let mut lab = Lab::start(dir.path(), spec)
            .await
            .unwrap_or_else(|err| panic!("the lab starts: {err:#}"));
        let tailnet = Tailnet::for_lab(&lab).unwrap_or_else(|err| {
            panic!(
                "the tailnet starts: {err:#}\nlogs in {}",
                dir.path().display()
            )
        });
        for host in &mut lab.hosts {
            let extra = settings(&host.name);
            tailnet.manage_with_agent(host, &extra).unwrap();
        }
        let world = World {
            tailnet,
            lab,
            _dir: dir,
        };
        for host in world.node_names() {
            world.wait_for_tailscale(&host, "agent on the real tailscale", |ts| {
                ts["version"] == "1.98.10"
            });
        }
        eprintln!(
            "tailnet world up in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            world.lab.dir.display()
        );
        Some(world)
    }

    /// Gives `host`'s agent new `[host.tailscale]` settings and waits until
    /// the restarted agent holds a session again.
    pub fn reconfigure(&mut self, host: &str, settings: &str) {
        let sessions = |world: &World| {
            let host = world.lab.hosts.iter().find(|h| h.name == host).unwrap();
            host.agent
                .log_text()
                .matches("connected to the coordinator")
                .count()
        };
        let before = sessions(self);
        let lab_host = self.lab.host(host);
        self.tailnet.manage_with_agent(lab_host, settings).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while sessions(self) == before {
            assert!(
                Instant::now() < deadline,
                "{host}'s agent did not come back"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn node_names(&self) -> Vec<String> {
        self.lab.hosts.iter().map(|h| h.name.clone()).collect()
    }

    pub fn key(&self, reusable: bool, tags: &[&str]) -> PreAuthKey {
        self.tailnet
            .headscale
            .create_key(KeyOptions { reusable, tags })
            .unwrap()
    }

    /// `key` in a 0600 file the CLI reads.
    pub fn key_file(&self, name: &str, key: &PreAuthKey) -> PathBuf {
        self.tailnet.key_file(name, key).unwrap()
    }

    /// `k3sfleet tailscale up NODE --auth-key-file FILE --login-server
    /// <headscale> --extra-flag=--accept-dns=false ARGS...`: (success,
    /// stdout + stderr).
    pub fn up(&self, node: &str, key_file: &std::path::Path, args: &[&str]) -> (bool, String) {
        let url = self.tailnet.headscale.url();
        let mut all = vec![
            "tailscale",
            "up",
            node,
            "--auth-key-file",
            key_file.to_str().unwrap(),
            "--login-server",
            &url,
            // The lab namespaces have no name servers to give tailscaled.
            "--extra-flag=--accept-dns=false",
        ];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = self.lab.run_cli(&all).unwrap();
        eprintln!("k3sfleet {}\n{stdout}{stderr}", all.join(" "));
        (ok, format!("{stdout}{stderr}"))
    }

    /// `k3sfleet node show NODE -o json`.
    pub fn node(&self, node: &str) -> Value {
        serde_json::from_str(
            &self
                .lab
                .cli_ok(&["node", "show", node, "-o", "json"])
                .unwrap(),
        )
        .unwrap()
    }

    /// The Tailscale state in the node's latest report.
    pub fn reported(&self, node: &str) -> Value {
        self.node(node)["lastReport"]["tailscale"].clone()
    }

    /// The node's `tailscale` check, as last reported.
    pub fn check(&self, node: &str) -> Value {
        self.node(node)["lastReport"]["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == "tailscale")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits (up to 60 s) until the node's report satisfies `ready`.
    pub fn wait_for_tailscale(
        &self,
        node: &str,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.reported(node);
            if ready(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{node}: no report with {what} within 60s; last: {state}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// One scrape of the node's agent /metrics (inside its namespace).
    pub fn agent_metrics(&self, node: &str) -> String {
        let host = self.lab.hosts.iter().find(|h| h.name == node).unwrap();
        let file = self
            .lab
            .dir
            .join("hosts")
            .join(node)
            .join("state/metrics-address");
        let address: SocketAddr = std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut stream = host.netns.as_ref().unwrap().connect(address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// `tailscale debug prefs` on a host, straight from its tailscaled.
    pub fn prefs(&self, host: &str) -> Value {
        let output = self
            .tailnet
            .daemon(host)
            .cli()
            .args(["debug", "prefs"])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Every log of the world: agents, coordinator, CLI-side files.
    pub fn k3sfleet_logs(&self) -> String {
        let mut text = self.lab.coordinator.log_text();
        for host in &self.lab.hosts {
            text.push_str(&host.agent.log_text());
        }
        text
    }

    /// The `k3sfleet` CLI as the lab's admin, run on `host`'s namespace and
    /// dialing `coordinator` (its certificate names the lab address).
    pub fn cli_on(&self, host: &str, coordinator: &str) -> Command {
        let netns = self
            .lab
            .hosts
            .iter()
            .find(|h| h.name == host)
            .and_then(|h| h.netns.as_ref())
            .unwrap();
        let (ca, cert, key) = self.lab.admin_credentials();
        let mut command = netns.command(crate::bin("k3sfleet"));
        command
            .env("HOME", &self.lab.dir)
            .env("K3SFLEET_COORDINATOR", coordinator)
            .env(
                "K3SFLEET_SERVER_NAME",
                self.lab.coordinator_addr.ip().to_string(),
            )
            .env("K3SFLEET_CA", ca)
            .env("K3SFLEET_CERT", cert)
            .env("K3SFLEET_KEY", key);
        command
    }
}

/// Watches every process's command line and environment while it lives,
/// for any of `secrets`.
pub struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    found: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CmdlineWatch {
    pub fn start(secrets: Vec<String>) -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, found, samples) = (stop.clone(), found.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                        for file in ["cmdline", "environ"] {
                            let Ok(bytes) = std::fs::read(entry.path().join(file)) else {
                                continue;
                            };
                            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
                            if secrets.iter().any(|s| text.contains(s.as_str())) {
                                found
                                    .lock()
                                    .unwrap()
                                    .push(format!("{}/{file}: {text}", entry.path().display()));
                            }
                        }
                    }
                    *samples.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        CmdlineWatch {
            stop,
            found,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops; returns (samples taken, processes that showed a secret).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let samples = *self.samples.lock().unwrap();
        (samples, self.found.lock().unwrap().clone())
    }
}

impl Drop for CmdlineWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
