//! `k3sfleet-agent`: the host agent daemon, and enrolling its host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k3sfleet_agent::check_cmd::{self, CheckOptions};
use k3sfleet_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use k3sfleet_agent::host_agent::HostAgent;
use k3sfleet_agent::journal::Journal;
use k3sfleet_agent::metrics;
use k3sfleet_agent::renewal;
use k3sfleet_agent::session::{self, Agent};
use k3sfleet_daemon::{logging, shutdown, systemd};
use k3sfleet_pki::{DialTarget, Fingerprint, Role, TlsFiles};
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
    /// Check the configuration file and the credentials it names, as `run`
    /// would, and exit: 0 when the agent can start. Package scripts use it
    /// to start the service only once it has credentials.
    CheckConfig {
        /// Configuration file
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "K3SFLEET_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Join the fleet with a bootstrap token: generate this host's key (it never
    /// leaves the host), get a certificate for the node name, and write key,
    /// certificate and fleet CA where the config's [tls] section says.
    ///
    /// Pass the token in a file or on stdin (--token-file -): a --token flag
    /// shows in process listings.
    Enroll {
        /// Configuration file (its [tls] paths receive the files)
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "K3SFLEET_AGENT_CONFIG")]
        config: PathBuf,
        /// Coordinator address [default: coordinator.address from the config]
        #[arg(long, value_name = "HOST:PORT")]
        coordinator: Option<String>,
        /// Node name [default: node_name from the config, else the host name]
        #[arg(long)]
        name: Option<String>,
        /// File holding the token, or - for stdin
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "token",
            required_unless_present = "token"
        )]
        token_file: Option<PathBuf>,
        /// The token itself (visible in process listings; prefer --token-file)
        #[arg(long)]
        token: Option<String>,
        /// Fingerprint of the fleet CA, as `k3sfleet-coordinator ca init` printed it
        #[arg(long)]
        ca_fingerprint: Fingerprint,
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
        Command::CheckConfig { config } => load_for_run(&config).map(|(_, node_name)| {
            println!("{}: ok (node {node_name})", config.display());
        }),
        Command::Enroll {
            config,
            coordinator,
            name,
            token_file,
            token,
            ca_fingerprint,
        } => enroll(config, coordinator, name, token_file, token, ca_fingerprint),
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

/// Loads the config and checks everything `run` needs before it starts:
/// the credentials are readable and name the configured node.
fn load_for_run(config_path: &std::path::Path) -> anyhow::Result<(AgentConfig, String)> {
    let config = AgentConfig::load(config_path)?;
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
    Ok((config, node_name))
}

fn run_daemon(config_path: PathBuf) -> anyhow::Result<()> {
    let (config, node_name) = load_for_run(&config_path)?;
    logging::init("k3sfleet-agent", "info");
    let journal = Journal::open(&config.state_dir)?;
    // One thread: the agent waits on the network, its host tools and timers,
    // and never computes for long on the runtime (hashing and fsync go to
    // spawn_blocking, statfs to its own threads). A worker per core would
    // cost a stack and a malloc arena each, and the multi-threaded
    // scheduler's code would be paged in too: 0.6 MiB less RSS on a 2-core
    // host, more on larger ones (agent/benches/footprint.rs). The watchdog
    // ping is a task on this thread, so a wedged runtime stops it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let config = Arc::new(config);
        let duties = HostAgent::new(config.clone());
        // Before the session: a re-sent command waits for it.
        let _settling = duties.spawn_settle();
        let stop = CancellationToken::new();
        let observer = duties.spawn_observer(stop.clone());
        let enrollment = duties.spawn_tailscale_enrollment(node_name.clone(), stop.clone());
        let metrics = match config.metrics.enabled {
            true => Some(serve_metrics(&config, duties.clone(), stop.clone()).await?),
            false => None,
        };
        let agent = Agent::new(config.clone(), duties, Arc::new(journal));
        let renewal = tokio::spawn(renewal::keep_renewed(
            config.clone(),
            agent.reconnect_handle(),
            stop.clone(),
        ));
        let session = tokio::spawn(agent.run(stop.clone()));
        systemd::notify_ready(&format!(
            "node {node_name}, coordinator {}",
            config.coordinator.address
        ));
        let _watchdog = systemd::spawn_watchdog(|| true);
        tracing::info!(node = node_name, "agent started");
        let signal = shutdown::signal_received().await;
        tracing::info!(signal, "shutting down");
        systemd::notify_stopping();
        stop.cancel();
        let _ = tokio::join!(session, renewal, observer);
        // An `up` in flight is killed with its task (kill_on_drop).
        if let Some(enrollment) = enrollment {
            enrollment.abort();
        }
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    })
}

/// Binds `metrics.listen` (failing start-up if it cannot) and serves
/// /metrics; the bound address goes to `<state_dir>/metrics-address`, which
/// tells tests and scripts the port when the config says port 0.
async fn serve_metrics(
    config: &AgentConfig,
    duties: Arc<HostAgent>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = metrics::bind(config.metrics.listen).await?;
    let address = listener
        .local_addr()
        .context("reading the metrics address")?;
    let path = config.state_dir.join("metrics-address");
    let tmp = config.state_dir.join("metrics-address.tmp");
    std::fs::write(&tmp, format!("{address}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    let tls = match &config.metrics.tls {
        Some(tls) => Some(Arc::new(
            k3sfleet_pki::metrics_tls(&tls.cert, &tls.key, tls.client_ca.as_deref())
                .context("loading [metrics.tls]")?,
        )),
        None => None,
    };
    tracing::info!(%address, https = tls.is_some(), "serving metrics");
    let endpoint = metrics::Endpoint {
        render: metrics::render_with(move || duties.metrics_text()),
        ready: None,
        banner: "k3sfleet-agent: metrics at /metrics\n",
        tls,
    };
    Ok(tokio::spawn(metrics::serve(listener, endpoint, stop)))
}

fn enroll(
    config_path: PathBuf,
    coordinator: Option<String>,
    name: Option<String>,
    token_file: Option<PathBuf>,
    token: Option<String>,
    pin: Fingerprint,
) -> anyhow::Result<()> {
    let config = AgentConfig::load_settings(&config_path)?;
    let token = match (token_file, token) {
        (Some(path), _) => k3sfleet_daemon::secret::read_secret(&path, "token")?,
        (None, Some(token)) => token,
        (None, None) => anyhow::bail!("pass --token-file FILE (or - for stdin)"),
    };
    let name = match name.or(config.node_name.clone()) {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .context("reading the host name; pass --name")?
            .into_string()
            .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; pass --name"))?,
    };
    let mut target =
        DialTarget::new(coordinator.unwrap_or_else(|| config.coordinator.address.clone()));
    target.server_name = config.coordinator.server_name.clone();
    let files = TlsFiles {
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let enrollment = runtime
        .block_on(k3sfleet_pki::enroll(
            &target,
            pin,
            &token,
            &name,
            Role::Agent,
            Some(config.role),
        ))
        .with_context(|| format!("enrolling {name} at {}", target.address))?;
    k3sfleet_pki::install(&files, &enrollment)?;
    println!(
        "enrolled node {name}: certificate {} (serial {}), key {}, fleet CA {}",
        files.cert.display(),
        enrollment.serial,
        files.key.display(),
        files.ca.display()
    );
    Ok(())
}
