//! `k3sfleet-standin-kubelet`: the process a stand-in K3s runs while active.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use k3sfleet_standin::kubelet::{KubeletSpec, run};

/// Register a node with the (simulated) API server and heartbeat its status.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-standin-kubelet")]
struct Args {
    /// API server base URL
    #[arg(long)]
    api: String,
    #[arg(long)]
    node: String,
    /// Kubelet version to report, e.g. v1.31.5+k3s1
    #[arg(long)]
    version: String,
    /// This is a K3s server (control plane, etcd)
    #[arg(long)]
    server: bool,
    /// Report Ready this long after starting
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ready_after: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Answer etcd /health here (servers)
    #[arg(long)]
    etcd_health: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let spec = KubeletSpec {
        api: args.api.trim_end_matches('/').to_string(),
        node: args.node,
        version: args.version,
        server: args.server,
        ready_after: args.ready_after,
        heartbeat: args.heartbeat,
        etcd_health: args.etcd_health,
    };
    match run(spec).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k3sfleet-standin-kubelet: {err}");
            ExitCode::FAILURE
        }
    }
}
