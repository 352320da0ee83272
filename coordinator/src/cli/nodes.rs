//! `k3sfleet nodes`, `k3sfleet node show`, `k3sfleet audit`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use k3sfleet_proto::v1::admin_service_client::AdminServiceClient;
use k3sfleet_proto::v1::{
    GetNodeRequest, ListAuditRequest, ListNodesRequest, NodeDetail, NodeSummary,
};

use super::connection::ConnectionArgs;
use super::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node: deny its certificates and close its session at once.
    /// Enrolling it again needs a token created afterwards.
    Revoke { name: String },
    /// Print a node's latest full health report.
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub async fn list(connection: &ConnectionArgs, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let response = client.list_nodes(ListNodesRequest {}).await?.into_inner();
    match format {
        OutputFormat::Json => print!("{}", output::json(&response)?),
        OutputFormat::Table => print!("{}", nodes_table(&response.nodes)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The nodes as a table; a role only the node's hello claims (its
/// certificate binds none) is marked "(said)", and every hello that
/// disagreed with what the coordinator knows is spelled out below it.
pub fn nodes_table(nodes: &[NodeSummary]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                role_of(node),
                output::connectivity(node.connectivity).to_string(),
                if node.last_report_age_ms < 0 {
                    "never".to_string()
                } else {
                    output::age(Duration::from_millis(node.last_report_age_ms as u64))
                },
                or_dash(&node.k3s_version),
                output::health(node.health).to_string(),
            ]
        })
        .collect();
    let mut out = output::table(
        &["NAME", "ROLE", "CONNECTED", "LAST REPORT", "K3S", "HEALTH"],
        &rows,
    );
    for node in nodes.iter().filter(|n| !n.identity_warning.is_empty()) {
        let _ = writeln!(out, "warning: {}: {}", node.name, node.identity_warning);
    }
    out
}

fn role_of(node: &NodeSummary) -> String {
    let role = output::role(node.role);
    if node.role_bound {
        role.to_string()
    } else {
        format!("{role} (said)")
    }
}

pub async fn run(connection: &ConnectionArgs, command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Revoke { name } => {
            super::access::revoke(connection, name, k3sfleet_pki::Role::Agent).await
        }
        NodeCommand::Show {
            name,
            output: format,
        } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let detail = client.get_node(GetNodeRequest { name }).await?.into_inner();
            match format {
                OutputFormat::Json => print!("{}", output::json(&detail)?),
                OutputFormat::Table => print!("{}", describe_node(&detail)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn audit(
    connection: &ConnectionArgs,
    node: Option<String>,
    limit: u32,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let response = client
        .list_audit(ListAuditRequest {
            limit,
            node: node.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match format {
        OutputFormat::Json => print!("{}", output::json(&response)?),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = response
                .entries
                .iter()
                .map(|e| {
                    vec![
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + Duration::from_millis(e.at_unix_ms.max(0) as u64),
                        )
                        .to_string(),
                        e.actor.clone(),
                        e.action.clone(),
                        or_dash(&e.node),
                        e.detail.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["TIME", "ACTOR", "ACTION", "NODE", "DETAIL"], &rows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of `node show`.
pub fn describe_node(detail: &NodeDetail) -> String {
    let mut out = String::new();
    let summary = detail.summary.clone().unwrap_or_default();
    let _ = writeln!(out, "Node:        {}", summary.name);
    let _ = writeln!(
        out,
        "Role:        {}",
        if summary.role_bound {
            format!("{} (bound in its certificate)", output::role(summary.role))
        } else {
            format!(
                "{} (its hello says; the certificate binds none)",
                output::role(summary.role)
            )
        }
    );
    if !summary.identity_warning.is_empty() {
        let _ = writeln!(out, "Warning:     {}", summary.identity_warning);
    }
    let _ = writeln!(
        out,
        "Connected:   {}",
        output::connectivity(summary.connectivity)
    );
    let _ = writeln!(out, "Health:      {}", output::health(summary.health));
    if let Some(hello) = &detail.last_hello {
        let protocol = hello
            .protocol
            .map_or_else(|| "1".to_string(), |p| format!("{}..={}", p.min, p.max));
        let _ = writeln!(
            out,
            "Agent:       {} (protocol {protocol})",
            hello.agent_version
        );
        let _ = writeln!(
            out,
            "OS:          {} {} ({}, kernel {})",
            hello.os_id, hello.os_version, hello.arch, hello.kernel_version
        );
        let _ = writeln!(out, "Boot ID:     {}", hello.boot_id);
    }
    let Some(report) = &detail.last_report else {
        out.push_str("No health report yet.\n");
        return out;
    };
    if summary.last_report_age_ms >= 0 {
        let _ = writeln!(
            out,
            "Reported:    {} ago (report #{})",
            output::age(Duration::from_millis(summary.last_report_age_ms as u64)),
            report.sequence
        );
    }
    if let Some(host) = &report.host {
        let _ = writeln!(
            out,
            "Host:        {} CPUs, {:.0}% busy, load {:.2} {:.2} {:.2}, memory {} free of {}, up {}",
            host.cpu_count,
            host.cpu_usage_ratio * 100.0,
            host.load1,
            host.load5,
            host.load15,
            bytes(host.memory_available_bytes),
            bytes(host.memory_total_bytes),
            output::age(Duration::from_secs(host.uptime_seconds)),
        );
    }
    if let Some(k3s) = &report.k3s {
        let _ = writeln!(
            out,
            "K3s:         {} ({} {})",
            or_dash(&k3s.installed_version),
            k3s.service_unit,
            if k3s.service_active {
                "active"
            } else {
                "inactive"
            }
        );
        if !k3s.previous_version.is_empty() {
            let _ = writeln!(out, "Rollback to: {}", k3s.previous_version);
        }
    }
    if let Some(ts) = &report.tailscale {
        let state = if !ts.installed {
            "not installed".to_string()
        } else if !ts.error.is_empty() {
            format!("unknown ({})", ts.error)
        } else {
            format!(
                "{} {}{}",
                ts.backend_state,
                ts.tailscale_ips.join(" "),
                if ts.backend_state == "Running" && !ts.online {
                    " (not connected to its control server)"
                } else {
                    ""
                }
            )
        };
        let _ = writeln!(out, "Tailscale:   {state}");
        if !ts.dns_name.is_empty() {
            let tags = if ts.tags.is_empty() {
                "no tags".to_string()
            } else {
                ts.tags.join(",")
            };
            let _ = writeln!(out, "  name:      {} ({tags})", ts.dns_name);
        }
        if ts.key_expired {
            let _ = writeln!(out, "  key:       expired");
        } else if ts.key_expiry_unix_ms > 0 {
            let _ = writeln!(
                out,
                "  key:       expires {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_millis(ts.key_expiry_unix_ms as u64)
                )
            );
        } else if ts.backend_state == "Running" {
            let _ = writeln!(out, "  key:       does not expire");
        }
    }
    if !report.disks.is_empty() {
        out.push_str("\nDisks:\n");
        let rows: Vec<Vec<String>> = report
            .disks
            .iter()
            .map(|d| {
                vec![
                    d.path.clone(),
                    or_dash(&d.fs_type),
                    bytes(d.size_bytes),
                    bytes(d.available_bytes),
                    if d.inodes_total == 0 {
                        "-".into()
                    } else {
                        format!(
                            "{:.0}%",
                            100.0 * (d.inodes_total - d.inodes_free.min(d.inodes_total)) as f64
                                / d.inodes_total as f64
                        )
                    },
                    if d.read_only {
                        "ro".into()
                    } else {
                        "rw".into()
                    },
                    if d.error.is_empty() {
                        "ok".into()
                    } else {
                        d.error.clone()
                    },
                ]
            })
            .collect();
        out.push_str(&indent(&output::table(
            &[
                "PATH",
                "FS",
                "SIZE",
                "AVAIL",
                "INODES USED",
                "MODE",
                "STATE",
            ],
            &rows,
        )));
    }
    if !report.checks.is_empty() {
        out.push_str("\nChecks:\n");
        let mut checks = report.checks.clone();
        // Problems first, then by id.
        checks.sort_by_key(|c| (std::cmp::Reverse(c.status), c.id.clone()));
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                vec![
                    output::health(c.status).to_string(),
                    c.id.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&output::table(
            &["STATUS", "CHECK", "MESSAGE"],
            &rows,
        )));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// Binary units, one decimal: "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3sfleet_proto::v1::{Connectivity, Health};

    #[test]
    fn bytes_are_binary() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 * 1024 * 1024 * 1024), "10.0 GiB");
    }

    #[test]
    fn node_table_golden() {
        let nodes = vec![
            NodeSummary {
                name: "server-1".into(),
                role: 1,
                connectivity: Connectivity::Connected as i32,
                last_report_age_ms: 3_000,
                k3s_version: "v1.31.4+k3s1".into(),
                health: Health::Ok as i32,
                role_bound: true,
                ..Default::default()
            },
            NodeSummary {
                name: "worker-01".into(),
                role: 2,
                connectivity: Connectivity::Unreachable as i32,
                last_report_age_ms: -1,
                health: 0,
                identity_warning: "boot id b1 came back after a later one".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            nodes_table(&nodes),
            "NAME        ROLE           CONNECTED     LAST REPORT   K3S            HEALTH\n\
             server-1    server         yes           3s            v1.31.4+k3s1   ok\n\
             worker-01   agent (said)   unreachable   never         -              unknown\n\
             warning: worker-01: boot id b1 came back after a later one\n"
        );
    }
}
