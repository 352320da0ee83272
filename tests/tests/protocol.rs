//! The agent protocol end to end: version negotiation, commands routed to
//! their node only, and each command id run at most once. The agents here
//! are the real session code running in-process with hand-written host duties
//! that count what they are asked to do.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k3sfleet_agent::config::AgentConfig;
use k3sfleet_agent::duties::{HostDuties, ProgressSink};
use k3sfleet_agent::host::HostFacts;
use k3sfleet_agent::journal::Journal;
use k3sfleet_agent::session::Agent;
use k3sfleet_pki::{DialTarget, Role};
use k3sfleet_proto::v1::agent_service_client::AgentServiceClient;
use k3sfleet_proto::v1::{
    AgentMessage, Command, CommandOutcome, CommandResult, HealthReport, Hello, NodeRole,
    ProtocolRange, agent_message,
};
use k3sfleet_tests::{Cli, CoordinatorProcess, TestPki, wait_until};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Host duties that only count the commands they run.
struct CountingDuties {
    executed: AtomicUsize,
    changes: watch::Sender<u64>,
}

impl HostDuties for CountingDuties {
    fn facts(&self) -> HostFacts {
        HostFacts::default()
    }

    async fn k3s_version(&self) -> String {
        "v1.31.4+k3s1".into()
    }

    async fn report(&self) -> HealthReport {
        HealthReport::default()
    }

    async fn execute(&self, command: Command, progress: ProgressSink) -> CommandResult {
        progress.step("work", "working");
        // Long enough that a re-send can arrive while it runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let run = self.executed.fetch_add(1, Ordering::SeqCst) + 1;
        CommandResult {
            command_id: command.id,
            outcome: CommandOutcome::Succeeded as i32,
            message: format!("run number {run}"),
            ..Default::default()
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

struct InProcessAgent {
    duties: Arc<CountingDuties>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessAgent {
    fn start(
        dir: &Path,
        pki: &TestPki,
        coordinator: &CoordinatorProcess,
        name: &str,
        duties: Arc<CountingDuties>,
    ) -> Self {
        let files = pki.issue(Role::Agent, name);
        let state_dir = dir.join(format!("state-{name}"));
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "role = \"agent\"\nstate_dir = \"{}\"\n[coordinator]\naddress = \"{}\"\nmax_reconnect_delay = \"1s\"\n\
                 [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[report]\ninterval = \"300ms\"\n",
                state_dir.display(),
                coordinator.addr,
                pki.ca_cert().display(),
                files.cert.display(),
                files.key.display()
            ),
        )
        .unwrap();
        let config = Arc::new(AgentConfig::load(&config_path).unwrap());
        let journal = Arc::new(Journal::open(&config.state_dir).unwrap());
        let agent = Agent::new(config, duties.clone(), journal);
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        InProcessAgent { duties, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn counting() -> Arc<CountingDuties> {
    Arc::new(CountingDuties {
        executed: AtomicUsize::new(0),
        changes: watch::channel(0).0,
    })
}

fn connected(cli: &Cli, name: &str) -> bool {
    cli.node(name)
        .is_some_and(|n| n["connectivity"] == "CONNECTIVITY_CONNECTED")
}

/// Runs `k3sfleet k3s snapshot NODE --id ID` on a blocking thread.
async fn snapshot(cli: &Arc<Cli>, node: &str, id: &str) -> String {
    let (cli, node, id) = (cli.clone(), node.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        cli.ok(&["k3s", "snapshot", &node, "--name", "s1", "--id", &id])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_id_runs_at_most_once_across_resends_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let cli = Arc::new(Cli::new(
        &pki,
        coordinator.addr,
        pki.issue(Role::Admin, "alice"),
    ));
    let agent = InProcessAgent::start(dir.path(), &pki, &coordinator, "worker-01", counting());
    wait_until("worker-01 to connect", Duration::from_secs(30), || {
        connected(&cli, "worker-01")
    });

    // Two operators send the same id at once: it runs once, both get the result.
    let (first, second) = tokio::join!(
        snapshot(&cli, "worker-01", "snap-1"),
        snapshot(&cli, "worker-01", "snap-1")
    );
    assert!(
        first.contains("run number 1") && second.contains("run number 1"),
        "{first}\n{second}"
    );
    assert_eq!(agent.duties.executed.load(Ordering::SeqCst), 1);

    // Sent again later: answered from the journal.
    let again = snapshot(&cli, "worker-01", "snap-1").await;
    assert!(
        again.contains("run number 1") && again.contains("earlier run"),
        "{again}"
    );

    // After the agent restarts, the journal still remembers.
    let duties = agent.duties.clone();
    agent.stop().await;
    let agent = InProcessAgent::start(dir.path(), &pki, &coordinator, "worker-01", duties);
    wait_until("worker-01 to reconnect", Duration::from_secs(30), || {
        connected(&cli, "worker-01")
    });
    let after_restart = snapshot(&cli, "worker-01", "snap-1").await;
    assert!(after_restart.contains("earlier run"), "{after_restart}");
    assert_eq!(agent.duties.executed.load(Ordering::SeqCst), 1);

    // A new id runs.
    let fresh = snapshot(&cli, "worker-01", "snap-2").await;
    assert!(fresh.contains("run number 2"), "{fresh}");
    agent.stop().await;

    let audit = cli.ok(&["audit", "--node", "worker-01"]);
    assert!(
        audit.contains("command.sent") && audit.contains("command.finished"),
        "{audit}"
    );
    assert!(audit.contains("admin:alice"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_reach_only_the_node_they_are_meant_for() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let cli = Arc::new(Cli::new(
        &pki,
        coordinator.addr,
        pki.issue(Role::Admin, "alice"),
    ));
    let a = InProcessAgent::start(dir.path(), &pki, &coordinator, "node-a", counting());
    let b = InProcessAgent::start(dir.path(), &pki, &coordinator, "node-b", counting());
    wait_until("both nodes to connect", Duration::from_secs(30), || {
        connected(&cli, "node-a") && connected(&cli, "node-b")
    });
    snapshot(&cli, "node-b", "for-b").await;
    assert_eq!(b.duties.executed.load(Ordering::SeqCst), 1);
    assert_eq!(a.duties.executed.load(Ordering::SeqCst), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_speaking_only_newer_protocols_is_refused_with_both_versions_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(&dir.path().join("pki"));
    let coordinator = CoordinatorProcess::start(dir.path(), &pki, "");
    let files = pki.issue(Role::Agent, "future-node");
    let channel = k3sfleet_pki::dial(
        &DialTarget::new(coordinator.addr.to_string()),
        pki.client_tls(Some(&files)),
    )
    .await
    .unwrap();
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            node_name: "future-node".into(),
            role: NodeRole::Agent as i32,
            agent_version: "9.0.0".into(),
            protocol: Some(ProtocolRange { min: 7, max: 9 }),
            ..Default::default()
        })),
    };
    let status = AgentServiceClient::new(channel)
        .session(tokio_stream::iter([hello]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let message = status.message();
    assert!(
        message.contains(&format!("coordinator {}", env!("CARGO_PKG_VERSION"))),
        "{message}"
    );
    assert!(message.contains("agent 9.0.0 speaks 7..=9"), "{message}");
}
