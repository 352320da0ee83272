//! `k3sfleet-coordinator`: the fleet's central daemon, and its PKI setup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k3sfleet_coordinator::config::{CoordinatorConfig, DEFAULT_CONFIG_PATH};
use k3sfleet_coordinator::{pki_cmd, server};
use k3sfleet_daemon::{logging, shutdown, systemd};
use k3sfleet_pki::{ClientCertRequest, K3sRole, Role};

/// The k3sfleet coordinator: knows the fleet, drains nodes, runs rolling K3s upgrades.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-coordinator", version, max_term_width = 100)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run {
        /// Configuration file
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "K3SFLEET_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Check the configuration file and the credentials it names, as `run`
    /// would, and exit: 0 when the coordinator can start. Package scripts
    /// use it to start the service only once it has credentials.
    CheckConfig {
        /// Configuration file
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "K3SFLEET_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Manage the fleet CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue certificates signed by the fleet CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the fleet CA and the coordinator's server certificate.
    ///
    /// Writes ca.crt, ca.key, coordinator.crt and coordinator.key into --dir;
    /// keys are 0600 and never printed. Prints the CA fingerprint agents pin.
    Init {
        /// Directory for the CA and server files
        #[arg(long, default_value = "/etc/k3sfleet/pki")]
        dir: PathBuf,
        /// DNS name or IP address agents dial (repeatable; at least one)
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Lifetime of the server certificate
        #[arg(long, default_value = "365d", value_parser = k3sfleet_daemon::duration::parse)]
        server_ttl: Duration,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a client certificate and key (NAME.crt, NAME.key) for an agent,
    /// an admin or a reader.
    Issue {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Node name (agents) or person/tool name (admins, readers)
        #[arg(long)]
        name: String,
        /// For agents: what the host runs of K3s (server or agent), bound
        /// into the certificate; without it the agent's hello says.
        #[arg(long)]
        k3s_role: Option<K3sRole>,
        /// Directory holding ca.crt and ca.key
        #[arg(long, default_value = "/etc/k3sfleet/pki")]
        ca_dir: PathBuf,
        /// Where to write NAME.crt and NAME.key
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Certificate lifetime
        #[arg(long, default_value = "90d", value_parser = k3sfleet_daemon::duration::parse)]
        ttl: Duration,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
        .map_err(|err: k3sfleet_pki::RoleError| err.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG_PATH),
    }) {
        Command::Run { config } => run_daemon(config),
        Command::CheckConfig { config } => load_for_run(&config).map(|_| {
            println!("{}: ok", config.display());
        }),
        Command::Ca(CaCommand::Init {
            dir,
            sans,
            server_ttl,
            force,
        }) => pki_cmd::ca_init(&dir, &sans, server_ttl, force)
            .map(|done| {
                for file in &done.files {
                    println!("wrote {}", file.display());
                }
                println!("fleet CA fingerprint: {}", done.fingerprint);
            })
            .map_err(Into::into),
        Command::Cert(CertCommand::Issue {
            role: Role::Admin | Role::Reader,
            k3s_role: Some(_),
            ..
        }) => Err(anyhow::anyhow!("--k3s-role is for agent certificates only")),
        Command::Cert(CertCommand::Issue {
            role,
            name,
            k3s_role,
            ca_dir,
            out_dir,
            ttl,
            force,
        }) => pki_cmd::cert_issue(
            &ca_dir,
            &out_dir,
            &ClientCertRequest {
                name,
                role,
                k3s_role,
                validity: ttl,
            },
            force,
        )
        .map(|issued| {
            println!("wrote {}", issued.cert.display());
            println!("wrote {}", issued.key.display());
            println!("serial {}", issued.serial);
        })
        .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k3sfleet-coordinator: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config and checks the credentials, before anything starts.
fn load_for_run(config_path: &std::path::Path) -> anyhow::Result<CoordinatorConfig> {
    let config = CoordinatorConfig::load(config_path)?;
    k3sfleet_pki::root_store(&config.tls.ca)?;
    k3sfleet_pki::certified_key(&config.tls.cert, &config.tls.key)?;
    if let Some(tls) = config.metrics.as_ref().and_then(|m| m.tls.as_ref()) {
        k3sfleet_pki::certified_key(&tls.cert, &tls.key).context("[metrics.tls]")?;
        if let Some(ca) = &tls.client_ca {
            k3sfleet_pki::root_store(ca).context("[metrics.tls] client_ca")?;
        }
    }
    Ok(config)
}

fn run_daemon(config_path: PathBuf) -> anyhow::Result<()> {
    let config = load_for_run(&config_path)?;
    logging::init("k3sfleet-coordinator", "info");
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let mut running = server::start(config).await?;
        systemd::notify_ready(&format!("serving on {}", running.local_addr));
        let _watchdog = systemd::spawn_watchdog({
            let readiness = running.readiness.clone();
            move || readiness.loops_running()
        });
        tokio::select! {
            signal = shutdown::signal_received() => {
                tracing::info!(signal, "shutting down");
                systemd::notify_stopping();
                running.shutdown().await;
            }
            _ = running.stopped() => anyhow::bail!("the server stopped unexpectedly"),
        }
        Ok(())
    })
}

/// Every agent holds a socket: lift the soft open-file limit (often 1024) to
/// the hard limit, as Go's runtime does, so a large fleet is not refused.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => tracing::warn!(error = %err, soft, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read the open-file limit"),
    }
}
