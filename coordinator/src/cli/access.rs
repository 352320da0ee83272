//! Tokens, certificates and enrollment: `k3sfleet token|cert|enroll`,
//! `k3sfleet node revoke`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use k3sfleet_pki::{DialTarget, Fingerprint, K3sRole, Role, TlsFiles};
use k3sfleet_proto::v1::access_service_client::AccessServiceClient;
use k3sfleet_proto::v1::{
    CreateTokenRequest, ListCertificatesRequest, ListTokensRequest, NodeRole,
    RevokeIdentityRequest, RevokeTokenRequest, TokenInfo,
};

use super::connection::ConnectionArgs;
use super::output::{self, OutputFormat};
use crate::access::{role_from_proto, role_to_proto};
use k3sfleet_daemon::secret::read_secret;

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
        .map_err(|err: k3sfleet_pki::RoleError| err.to_string())
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token; prints it once (the coordinator keeps only a hash).
    Create {
        /// Role of the certificates the token yields
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long the token can be used (at most 7d)
        #[arg(long, default_value = "1h", value_parser = k3sfleet_daemon::duration::parse)]
        ttl: Duration,
        /// How many distinct names may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Only names matching this glob may enroll, e.g. 'worker-*'
        #[arg(long, default_value = "")]
        name_pattern: String,
        /// Lifetime of the certificates it yields [default: the coordinator's per role]
        #[arg(long, value_parser = k3sfleet_daemon::duration::parse)]
        cert_ttl: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
        /// For agent tokens: hosts enroll with it only as K3s servers, or
        /// only as K3s agents (bound into their certificates) [default: either]
        #[arg(long)]
        k3s_role: Option<K3sRole>,
    },
    /// List tokens: uses left, expiry, who enrolled.
    List {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Revoke a token so nobody can enroll with it any more.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List the certificates the coordinator issued.
    List {
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Deny every certificate issued so far to NAME in a role.
    Revoke {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Renew your own certificate (same key, fresh lifetime).
    Renew,
}

/// Get an admin or reader certificate with a bootstrap token.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Your name (the certificate's CommonName)
    #[arg(long)]
    name: String,
    #[arg(long, value_parser = parse_role, default_value = "admin")]
    role: Role,
    /// File holding the token, or - for stdin (keeps it out of process listings)
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Fingerprint of the fleet CA, as `k3sfleet-coordinator ca init` printed it
    #[arg(long)]
    ca_fingerprint: Fingerprint,
    /// Where to write NAME.key, NAME.crt, ca.crt and config.toml
    #[arg(long, default_value = "~/.config/k3sfleet")]
    dir: String,
}

pub async fn token(connection: &ConnectionArgs, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let mut client = AccessServiceClient::new(connection.connect().await?);
    match command {
        TokenCommand::Create {
            role,
            ttl,
            uses,
            name_pattern,
            cert_ttl,
            description,
            k3s_role,
        } => {
            if k3s_role.is_some() && role != Role::Agent {
                anyhow::bail!("--k3s-role is for agent tokens only, not {role} tokens");
            }
            let response = client
                .create_token(CreateTokenRequest {
                    role: role_to_proto(role) as i32,
                    ttl_seconds: ttl.as_secs().try_into().unwrap_or(u32::MAX),
                    uses,
                    name_pattern,
                    cert_ttl_seconds: cert_ttl
                        .map_or(0, |d| d.as_secs().try_into().unwrap_or(u32::MAX)),
                    description,
                    k3s_role: k3s_role.map_or(NodeRole::Unspecified, NodeRole::from) as i32,
                })
                .await?
                .into_inner();
            let info = response.info.unwrap_or_default();
            let bound = k3s_role.map_or(String::new(), |k3s| format!(" (K3s {k3s}s only)"));
            eprintln!(
                "token {} for role {role}{bound}: {} uses, expires {}; it is shown only now",
                info.id,
                info.uses_total,
                time(info.expires_unix_ms)
            );
            println!("{}", response.token);
        }
        TokenCommand::List { output: format } => {
            let response = client.list_tokens(ListTokensRequest {}).await?.into_inner();
            match format {
                OutputFormat::Json => print!("{}", output::json(&response)?),
                OutputFormat::Table => print!("{}", tokens_table(&response.tokens)),
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tokens_table(tokens: &[TokenInfo]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                match (role_from_proto(t.role), K3sRole::from_proto(t.k3s_role)) {
                    (Some(role), Some(k3s)) => format!("{role} (k3s {k3s})"),
                    (Some(role), None) => role.to_string(),
                    (None, _) => "?".into(),
                },
                format!("{}/{}", t.uses_left, t.uses_total),
                if t.name_pattern.is_empty() {
                    "*".into()
                } else {
                    t.name_pattern.clone()
                },
                if t.revoked_unix_ms != 0 {
                    "revoked".into()
                } else {
                    time(t.expires_unix_ms)
                },
                t.enrolled_names.join(","),
            ]
        })
        .collect();
    output::table(
        &["ID", "ROLE", "USES LEFT", "NAMES", "EXPIRES", "ENROLLED"],
        &rows,
    )
}

pub async fn revoke(
    connection: &ConnectionArgs,
    name: String,
    role: Role,
) -> anyhow::Result<ExitCode> {
    let mut client = AccessServiceClient::new(connection.connect().await?);
    let response = client
        .revoke_identity(RevokeIdentityRequest {
            name: name.clone(),
            role: role_to_proto(role) as i32,
        })
        .await?
        .into_inner();
    println!(
        "revoked every certificate of {role} {name} ({} known serials){}",
        response.revoked_serials.len(),
        if response.session_closed {
            "; its session was closed"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn cert(connection: &ConnectionArgs, command: CertCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertCommand::List {
            name,
            output: format,
        } => {
            let mut client = AccessServiceClient::new(connection.connect().await?);
            let response = client
                .list_certificates(ListCertificatesRequest {
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner();
            match format {
                OutputFormat::Json => print!("{}", output::json(&response)?),
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = response
                        .certificates
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                role_from_proto(c.role)
                                    .map_or("?", Role::as_str)
                                    .to_string(),
                                c.serial.clone(),
                                time(c.not_after_unix_ms),
                                c.issued_via.clone(),
                                if c.revoked {
                                    "revoked".into()
                                } else {
                                    "valid".into()
                                },
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(
                            &["NAME", "ROLE", "SERIAL", "EXPIRES", "ISSUED VIA", "STATE"],
                            &rows
                        )
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Revoke { name, role } => revoke(connection, name, role).await,
        CertCommand::Renew => {
            let resolved = connection.resolve()?;
            let cert = k3sfleet_pki::read_certificates(&resolved.cert)?.remove(0);
            let name = k3sfleet_pki::PeerIdentity::from_der(&cert)
                .with_context(|| format!("reading {}", resolved.cert.display()))?
                .name;
            let files = TlsFiles {
                ca: resolved.ca.clone(),
                cert: resolved.cert.clone(),
                key: resolved.key.clone(),
            };
            let renewal = k3sfleet_pki::renew(&resolved.target(), &files, &name).await?;
            println!(
                "renewed {}: serial {}, valid until {}",
                resolved.cert.display(),
                renewal.serial,
                time(renewal.not_after_unix_ms)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn enroll(connection: &ConnectionArgs, args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let coordinator = connection
        .coordinator
        .clone()
        .context("say where the coordinator is: --coordinator HOST:PORT")?;
    let token = read_secret(&args.token_file, "token")?;
    let dir = expand_home(&args.dir)?;
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{}.crt", args.name)),
        key: dir.join(format!("{}.key", args.name)),
    };
    let mut target = DialTarget::new(coordinator.clone());
    target.server_name = connection.server_name.clone();
    let enrollment = k3sfleet_pki::enroll(
        &target,
        args.ca_fingerprint,
        &token,
        &args.name,
        args.role,
        None,
    )
    .await?;
    k3sfleet_pki::install(&files, &enrollment)?;
    for path in [&files.key, &files.cert, &files.ca] {
        println!("wrote {}", path.display());
    }
    let config = dir.join("config.toml");
    if !config.exists() {
        let text = format!(
            "coordinator = \"{coordinator}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        k3sfleet_pki::write_public_file(&config, &text, false)?;
        println!("wrote {}", config.display());
    }
    println!(
        "enrolled {} {}: serial {}, valid until {}",
        args.role,
        args.name,
        enrollment.serial,
        time(enrollment.not_after_unix_ms)
    );
    Ok(ExitCode::SUCCESS)
}

fn expand_home(path: &str) -> anyhow::Result<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --dir")?;
            Ok(PathBuf::from(home).join(rest))
        }
        None => Ok(PathBuf::from(path)),
    }
}

fn time(unix_ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64),
    )
    .to_string()
}
