//! `k3sfleet check workloads`: what will make a rolling upgrade slow or
//! unsafe, before one starts.

use std::process::ExitCode;

use clap::Subcommand;
use k3sfleet_proto::v1::CheckWorkloadsRequest;
use k3sfleet_proto::v1::drain_service_client::DrainServiceClient;

use super::connection::ConnectionArgs;
use super::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Per workload: no PodDisruptionBudget, budgets that leave no room, all
    /// replicas on one node or zone, a single replica behind a budget,
    /// containers without requests and limits. Exit status 1 when anything is found.
    Workloads {
        /// Only this namespace [default: every namespace]
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub async fn run(connection: &ConnectionArgs, command: CheckCommand) -> anyhow::Result<ExitCode> {
    let CheckCommand::Workloads { namespace, output } = command;
    let mut client = DrainServiceClient::new(connection.connect().await?);
    let report = client
        .check_workloads(CheckWorkloadsRequest {
            namespace: namespace.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match output {
        OutputFormat::Json => print!("{}", output::json(&report)?),
        OutputFormat::Table if report.findings.is_empty() => {
            println!("No findings: every workload leaves room for a rolling upgrade.")
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = report
                .findings
                .iter()
                .map(|f| {
                    vec![
                        f.namespace.clone(),
                        f.workload.clone(),
                        f.check.clone(),
                        format!("{} (fix: {})", f.message, f.advice),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["NAMESPACE", "WORKLOAD", "CHECK", "FINDING"], &rows)
            );
        }
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
