//! `k3sfleet-standin-k3s-real`: what the stand-in K3s runs on the real tier.
//!
//!   k3sfleet-standin-k3s-real run --root ROOT --version V       # K3s server|agent
//!   k3sfleet-standin-k3s-real snapshot --root ROOT --name N     # k3s etcd-snapshot save

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k3sfleet_standin::real::{self, K3sLayout, RealHostConfig, log};

/// K3s on a real-tier stand-in host: etcd, the control plane and KWOK.
#[derive(Debug, Parser)]
#[command(name = "k3sfleet-standin-k3s-real")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run this host's components until SIGTERM
    Run {
        /// The stand-in host root
        #[arg(long)]
        root: PathBuf,
        /// The K3s version of the binary that is starting
        #[arg(long)]
        version: String,
    },
    /// Save an etcd snapshot of the local member
    Snapshot {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        name: String,
    },
}

fn load(root: &std::path::Path) -> Result<(RealHostConfig, K3sLayout), ExitCode> {
    let layout = K3sLayout::new(root);
    match RealHostConfig::load(&layout.config()) {
        Ok(config) => Ok((config, layout)),
        Err(err) => {
            log::error(&describe(&err));
            Err(ExitCode::FAILURE)
        }
    }
}

fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Run { root, version } => {
            let (config, layout) = match load(&root) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    log::error(&format!("cannot start a runtime: {err}"));
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(real::run(config, layout, version)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    log::error(&describe(&err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Snapshot { root, name } => {
            let (config, layout) = match load(&root) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match real::snapshot::save(&config, &layout, &name, now) {
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => {
                    log::error(&format!("Error: {}", describe(&err)));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
