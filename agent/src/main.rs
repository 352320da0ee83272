//! `k3sfleet-agent`: the host agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k3sfleet_agent::check_cmd::{self, CheckOptions};
use k3sfleet_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use k3sfleet_agent::duties::Outbox;
use k3sfleet_agent::host_agent::HostAgent;
use k3sfleet_agent::journal::Journal;
use k3sfleet_agent::metrics;
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
    /// Run every host check once and print the results. Exit status: 0 when
    /// no check is an error, 1 when one is, 2 when the checks cannot run.
    /// Needs no coordinator; reads only the [host] section of the config.
    Check {
        /// Configuration file [default: /etc/k3sfleet/agent.toml if it exists]
        #[arg(long, short, env = "K3SFLEET_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON (the health report's proto3 JSON) instead of text
        #[arg(long)]
        json: bool,
        /// First load the kernel modules Longhorn needs and persist them in
        /// /etc/modules-load.d
        #[arg(long)]
        fix_modules: bool,
        /// First enable and start iscsid
        #[arg(long)]
        fix_iscsid: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG_PATH),
    }) {
        Command::Run { config } => run_daemon(config),
        Command::Check {
            config,
            json,
            fix_modules,
            fix_iscsid,
        } => {
            return run_check(CheckOptions {
                config,
                json,
                fix_modules,
                fix_iscsid,
            });
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k3sfleet-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_check(options: CheckOptions) -> ExitCode {
    logging::init("k3sfleet-agent", "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("k3sfleet-agent: cannot start the async runtime: {err}");
            return ExitCode::from(check_cmd::EXIT_CANNOT_RUN);
        }
    };
    ExitCode::from(runtime.block_on(check_cmd::run(options)))
}

fn run_daemon(config_path: PathBuf) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config_path)?;
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
        let duties = HostAgent::new(config.clone());
        let stop = CancellationToken::new();
        let observer = duties.spawn_observer(stop.clone());
        let metrics = if config.metrics.enabled {
            let listener = metrics::bind(config.metrics.listen).await?;
            let address = listener
                .local_addr()
                .context("reading the metrics address")?;
            publish_metrics_address(&config.state_dir, address);
            tracing::info!(%address, "serving metrics");
            let render_from = duties.clone();
            let render: metrics::Render = std::sync::Arc::new(move || render_from.metrics_text());
            Some(tokio::spawn(metrics::serve(listener, render, stop.clone())))
        } else {
            None
        };
        let agent = Agent {
            duties,
            config: config.clone(),
            journal: std::sync::Arc::new(journal),
            outbox: std::sync::Arc::new(Outbox::default()),
        };
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
        let _ = observer.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    })
}

/// Writes the metrics address actually bound (useful with port 0) to
/// `<state_dir>/metrics-address`.
fn publish_metrics_address(state_dir: &std::path::Path, address: std::net::SocketAddr) {
    let path = state_dir.join("metrics-address");
    let tmp = state_dir.join("metrics-address.tmp");
    let written =
        std::fs::write(&tmp, format!("{address}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), error = %err, "cannot record the metrics address");
    }
}
