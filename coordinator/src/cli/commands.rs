//! Commands run on one node through its agent: K3s, Tailscale, remediation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use k3sfleet_proto::v1::admin_service_client::AdminServiceClient;
use k3sfleet_proto::v1::{
    ArtifactSource, Command, CommandOutcome, EtcdSnapshot, FromCoordinator, InstallK3s, Remediate,
    RollbackK3s, RunCommandRequest, TailscaleUp, artifact_source, command, command_event,
};

use super::connection::ConnectionArgs;
use k3sfleet_daemon::secret::read_secret;

#[derive(Debug, Args)]
pub struct CommandOptions {
    /// Command id (idempotency key): re-running with the same id returns the
    /// earlier result instead of running again [default: a fresh id]
    #[arg(long)]
    pub id: Option<String>,
    /// Stop waiting for the result after this long
    #[arg(long, default_value = "10m", value_parser = k3sfleet_daemon::duration::parse)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum K3sCommand {
    /// Install or upgrade K3s on a node to an exact version, verified by checksum,
    /// rolled back if it does not come up healthy.
    // `--version` here is the K3s version: without this, clap's propagated
    // `--version` flag collides with it (a panic in debug builds).
    #[command(disable_version_flag = true)]
    Install {
        node: String,
        /// K3s release tag, e.g. v1.31.5+k3s1
        #[arg(long)]
        version: String,
        /// Download from this mirror (laid out as <url>/<version>/<asset>)
        #[arg(long, conflicts_with_all = ["local_dir", "from_coordinator"])]
        mirror: Option<String>,
        /// Take the artifacts from this directory on the host (<dir>/<version>/<asset>)
        #[arg(long, conflicts_with = "from_coordinator")]
        local_dir: Option<String>,
        /// Stream the artifacts from the coordinator's artifact directory
        #[arg(long)]
        from_coordinator: bool,
        /// How long the new version may take to come up before rollback [default: the agent's]
        #[arg(long, value_parser = k3sfleet_daemon::duration::parse)]
        health_timeout: Option<std::time::Duration>,
        #[command(flatten)]
        options: CommandOptions,
    },
    /// Put the previous K3s binary back on a node and restart it.
    ///
    /// Declarative: names the binary to run, so running it again after an
    /// interruption changes nothing once that binary runs.
    // The field `version` (--to) collides with clap's propagated `--version`
    // flag as in Install (a panic in debug builds).
    #[command(disable_version_flag = true)]
    Rollback {
        node: String,
        /// The release to return to [default: the previous version the node reports]
        #[arg(long = "to", value_name = "VERSION")]
        version: Option<String>,
        /// The SHA-256 of that release's binary, when known
        #[arg(long)]
        sha256: Option<String>,
        #[command(flatten)]
        options: CommandOptions,
    },
    /// Take an etcd snapshot on a server node.
    Snapshot {
        node: String,
        /// Snapshot name [default: k3sfleet-<time>]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        options: CommandOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum TailscaleCommand {
    /// Run `tailscale up` on a node with the complete desired settings
    /// (what is not named goes back to its default). The auth key is read
    /// from a file or stdin, never from the command line, and is passed to
    /// tailscale in a 0600 file; a Running node whose control server and
    /// tags stay is changed in place without using it. The same settings
    /// again change nothing.
    Up {
        node: String,
        /// File holding the auth key, or - for stdin
        #[arg(long, value_name = "FILE")]
        auth_key_file: PathBuf,
        /// Tailscale hostname [default: the node name]
        #[arg(long)]
        hostname: Option<String>,
        /// Tags to advertise, e.g. tag:k3s (repeatable); leave out when the
        /// key carries the tags (Headscale's pre-auth keys must)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Control server URL (e.g. a Headscale server); http:// only where
        /// the agent's config allows it
        #[arg(long)]
        login_server: Option<String>,
        /// Further `tailscale up` flags (repeatable): --accept-routes,
        /// --accept-dns, --shields-up; others (--ssh, exit-node flags, ...)
        /// only where the agent's host.tailscale.allow_flags lists them
        #[arg(long = "extra-flag", allow_hyphen_values = true)]
        extra_flags: Vec<String>,
        #[command(flatten)]
        options: CommandOptions,
    },
}

#[derive(Debug, Args)]
pub struct RemediateArgs {
    node: String,
    /// Load the kernel modules Longhorn needs and persist them
    #[arg(long)]
    load_modules: bool,
    /// Enable and start iscsid
    #[arg(long)]
    enable_iscsid: bool,
    #[command(flatten)]
    options: CommandOptions,
}

pub async fn k3s(connection: &ConnectionArgs, command: K3sCommand) -> anyhow::Result<ExitCode> {
    match command {
        K3sCommand::Install {
            node,
            version,
            mirror,
            local_dir,
            from_coordinator,
            health_timeout,
            options,
        } => {
            let kind = match (mirror, local_dir, from_coordinator) {
                (Some(url), _, _) => Some(artifact_source::Kind::MirrorUrl(url)),
                (_, Some(dir), _) => Some(artifact_source::Kind::LocalDir(dir)),
                (_, _, true) => Some(artifact_source::Kind::Coordinator(FromCoordinator {})),
                _ => None,
            };
            let action = command::Action::InstallK3s(InstallK3s {
                version,
                source: kind.map(|kind| ArtifactSource { kind: Some(kind) }),
                health_timeout_seconds: health_timeout.map_or(0, |d| d.as_secs() as u32),
            });
            run_on(connection, node, action, options).await
        }
        K3sCommand::Rollback {
            node,
            version,
            sha256,
            options,
        } => {
            let version = match version {
                Some(version) => version,
                None => previous_version(connection, &node).await?,
            };
            run_on(
                connection,
                node,
                command::Action::RollbackK3s(RollbackK3s {
                    version,
                    sha256: sha256.unwrap_or_default(),
                }),
                options,
            )
            .await
        }
        K3sCommand::Snapshot {
            node,
            name,
            options,
        } => {
            let name = name.unwrap_or_else(|| {
                format!(
                    "k3sfleet-{}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                )
                .replace(':', "-")
            });
            run_on(
                connection,
                node,
                command::Action::EtcdSnapshot(EtcdSnapshot { name }),
                options,
            )
            .await
        }
    }
}

pub async fn tailscale(
    connection: &ConnectionArgs,
    command: TailscaleCommand,
) -> anyhow::Result<ExitCode> {
    let TailscaleCommand::Up {
        node,
        auth_key_file,
        hostname,
        tags,
        login_server,
        extra_flags,
        options,
    } = command;
    let auth_key = read_secret(&auth_key_file, "auth key")?;
    let action = command::Action::TailscaleUp(TailscaleUp {
        auth_key,
        hostname: hostname.unwrap_or_else(|| node.clone()),
        advertise_tags: tags,
        login_server: login_server.unwrap_or_default(),
        extra_flags,
    });
    run_on(connection, node, action, options).await
}

pub async fn remediate(
    connection: &ConnectionArgs,
    args: RemediateArgs,
) -> anyhow::Result<ExitCode> {
    if !args.load_modules && !args.enable_iscsid {
        anyhow::bail!("say what to fix: --load-modules and/or --enable-iscsid");
    }
    let action = command::Action::Remediate(Remediate {
        load_modules: args.load_modules,
        enable_iscsid: args.enable_iscsid,
    });
    run_on(connection, args.node, action, args.options).await
}

/// Sends one command and prints its progress; the exit code is the outcome.
/// The version a node keeps for rollback, as its agent last reported it.
async fn previous_version(connection: &ConnectionArgs, node: &str) -> anyhow::Result<String> {
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let detail = client
        .get_node(k3sfleet_proto::v1::GetNodeRequest {
            name: node.to_string(),
        })
        .await?
        .into_inner();
    let previous = detail
        .last_report
        .and_then(|r| r.k3s)
        .map(|k| k.previous_version)
        .unwrap_or_default();
    if previous.is_empty() {
        anyhow::bail!(
            "{node} reports no previous K3s binary to roll back to; name one with --to VERSION"
        );
    }
    Ok(previous)
}

async fn run_on(
    connection: &ConnectionArgs,
    node: String,
    action: command::Action,
    options: CommandOptions,
) -> anyhow::Result<ExitCode> {
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let mut events = client
        .run_command(RunCommandRequest {
            node: node.clone(),
            command: Some(Command {
                id: options.id.unwrap_or_default(),
                action: Some(action),
            }),
            timeout_seconds: options.timeout.as_secs().max(1) as u32,
        })
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        match event.event {
            Some(command_event::Event::Progress(progress)) => {
                eprintln!("{node}: {}: {}", progress.step, progress.message);
            }
            Some(command_event::Event::Result(result)) => {
                let outcome =
                    CommandOutcome::try_from(result.outcome).unwrap_or(CommandOutcome::Unspecified);
                let replayed = if result.replayed {
                    " (result of an earlier run)"
                } else {
                    ""
                };
                println!(
                    "{node}: {}{replayed}: {} [command {}]",
                    crate::commands::outcome_name(result.outcome),
                    result.message,
                    result.command_id
                );
                return Ok(match outcome {
                    CommandOutcome::Succeeded | CommandOutcome::NoOp => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                });
            }
            None => {}
        }
    }
    anyhow::bail!("the coordinator ended the command's stream without a result")
}
