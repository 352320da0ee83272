//! `k3sfleet`: the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use k3sfleet_coordinator::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("k3sfleet: {}", k3sfleet_coordinator::cli::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
