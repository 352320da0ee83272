//! The `k3sfleet` operator CLI.

mod access;
mod check;
mod commands;
mod connection;
mod drain;
mod nodes;
mod output;
mod release;
mod rollout_view;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use connection::{CliConfig, ConnectionArgs};
pub use output::OutputFormat;

/// How the CLI finds the coordinator, printed by `--help`.
const CONNECTION_HELP: &str = "\
Connection: the CLI finds the coordinator and your credentials, in order of precedence,
from flags, from K3SFLEET_* environment variables, and from a config file:
--config / K3SFLEET_CONFIG, else ~/.config/k3sfleet/config.toml, else /etc/k3sfleet/cli.toml.
The file holds the same keys as the flags:

    coordinator = \"coordinator.example:7443\"
    ca = \"/etc/k3sfleet/pki/ca.crt\"
    cert = \"/home/alice/.config/k3sfleet/alice.crt\"
    key = \"/home/alice/.config/k3sfleet/alice.key\"";

/// Operate a K3s fleet through its k3sfleet coordinator.
#[derive(Debug, Parser)]
#[command(
    name = "k3sfleet",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = CONNECTION_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// List the fleet's nodes: role, connection, last report, K3s version, health.
    Nodes {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Work with one node.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Show the audit log: operator actions and commands sent, newest first.
    Audit {
        /// Only entries about this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Manage K3s on one node through its agent.
    #[command(subcommand)]
    K3s(commands::K3sCommand),
    /// Enroll a node in Tailscale through its agent.
    #[command(subcommand)]
    Tailscale(commands::TailscaleCommand),
    /// Fix a node's host prerequisites (only what is asked).
    Remediate(commands::RemediateArgs),
    /// Cordon a node and evict its pods without breaking any PodDisruptionBudget,
    /// showing each pod as it goes and what blocks it.
    Drain(drain::DrainArgs),
    /// Make a node schedulable again.
    Uncordon { node: String },
    /// Bootstrap tokens for enrolling hosts and operators.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Certificates the coordinator issued: list, revoke, renew your own.
    #[command(subcommand)]
    Cert(access::CertCommand),
    /// Get an admin or reader certificate with a bootstrap token.
    Enroll(access::EnrollArgs),
    /// Rolling K3s upgrades of the fleet.
    #[command(subcommand)]
    Upgrade(upgrade::UpgradeCommand),
    /// Look for what would make a rolling upgrade slow or unsafe.
    #[command(subcommand)]
    Check(check::CheckCommand),
    /// Sign K3s releases with an offline key, so hosts install only those (no coordinator needed).
    #[command(subcommand)]
    Release(release::ReleaseCommand),
}

/// Runs the CLI; the exit code says whether it worked.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let connection = cli.connection;
    match cli.command {
        CliCommand::Nodes { output } => nodes::list(&connection, output).await,
        CliCommand::Node(command) => nodes::run(&connection, command).await,
        CliCommand::Audit {
            node,
            limit,
            output,
        } => nodes::audit(&connection, node, limit, output).await,
        CliCommand::K3s(command) => commands::k3s(&connection, command).await,
        CliCommand::Tailscale(command) => commands::tailscale(&connection, command).await,
        CliCommand::Remediate(args) => commands::remediate(&connection, args).await,
        CliCommand::Drain(args) => drain::drain(&connection, args).await,
        CliCommand::Uncordon { node } => drain::uncordon(&connection, node).await,
        CliCommand::Token(command) => access::token(&connection, command).await,
        CliCommand::Cert(command) => access::cert(&connection, command).await,
        CliCommand::Enroll(args) => access::enroll(&connection, args).await,
        CliCommand::Upgrade(command) => upgrade::run(&connection, command).await,
        CliCommand::Check(command) => check::run(&connection, command).await,
        CliCommand::Release(command) => release::run(command),
    }
}

/// An error and its causes on one line, gRPC statuses reduced to their message.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(status) => format!("{} ({:?})", status.message(), status.code()),
            None => cause.to_string(),
        };
        // Wrappers often repeat their source's text; print it once.
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
