//! `k3sfleet-agent`: the host agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k3sfleet_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use k3sfleet_agent::duties::Outbox;
use k3sfleet_agent::host_agent::HostAgent;
use k3sfleet_agent::journal::Journal;
use k3sfleet_agent::session::{self, Agent};
use k3sfleet_daemon::{logging, shutdown, systemd};
use tokio_util::sync::CancellationToken;

/// The k3sfleet host agent: manages K3s on this host and reports to the coordinator.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-agent", version, max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run {
        /// Configuration file
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "K3SFLEET_AGENT_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG_PATH),
    }) {
        Command::Run { config } => run_daemon(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k3sfleet-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(config_path: PathBuf) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config_path)?;
    // Fail now, not on the first connection, when the credentials are unusable.
    k3sfleet_pki::root_store(&config.tls.ca)?;
    k3sfleet_pki::certified_key(&config.tls.cert, &config.tls.key)?;
    let node_name = session::node_name(&config)?;
    if let Some(configured) = &config.node_name
        && *configured != node_name
    {
        anyhow::bail!(
            "{}: node_name is {configured:?} but the certificate {} is for {node_name:?}",
            config_path.display(),
            config.tls.cert.display()
        );
    }
    logging::init("k3sfleet-agent", "info");
    let journal = Journal::open(&config.state_dir)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = std::sync::Arc::new(config);
        let agent = Agent {
            duties: HostAgent::new(&config),
            config: config.clone(),
            journal: std::sync::Arc::new(journal),
            outbox: std::sync::Arc::new(Outbox::default()),
        };
        let stop = CancellationToken::new();
        let session = tokio::spawn(agent.run(stop.clone()));
        systemd::notify_ready(&format!(
            "node {node_name}, coordinator {}",
            config.coordinator.address
        ));
        let _watchdog = systemd::spawn_watchdog();
        tracing::info!(node = node_name, "agent started");
        let signal = shutdown::signal_received().await;
        tracing::info!(signal, "shutting down");
        systemd::notify_stopping();
        stop.cancel();
        let _ = session.await;
        Ok(())
    })
}
