//! `k3sfleet-standin-k3s`: stand-in K3s releases and units for hosts that run
//! real systemd (the booted-host tests, packaging/test/booted-k3s.sh), made by
//! the same code as every other tier's.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k3sfleet_standin::{K3sBehaviour, k3s_binary, k3s_unit, write_release};

#[derive(Debug, Parser)]
#[command(name = "k3sfleet-standin-k3s")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a release laid out like GitHub's (<dir>/<version>/k3s and its
    /// checksum file); prints the binary's SHA-256.
    #[command(disable_version_flag = true)]
    Release {
        #[arg(long)]
        dir: PathBuf,
        /// Release tag, e.g. v1.31.5+k3s1
        #[arg(long)]
        version: String,
        /// healthy, fails-to-start, hangs-on-start, slow-to-start:SECONDS
        #[arg(long, default_value = "healthy", value_parser = parse_behaviour)]
        behaviour: K3sBehaviour,
        /// Pad the binary to this many bytes
        #[arg(long, default_value_t = 0)]
        size: usize,
    },
    /// Write the unit install.sh writes for a role (server: k3s.service,
    /// agent: k3s-agent.service) into a directory; prints its path.
    Unit {
        #[arg(long, value_parser = ["server", "agent"])]
        role: String,
        /// e.g. <root>/etc/systemd/system
        #[arg(long)]
        dir: PathBuf,
    },
}

fn parse_behaviour(text: &str) -> Result<K3sBehaviour, String> {
    match text.split_once(':') {
        None if text == "healthy" => Ok(K3sBehaviour::Healthy),
        None if text == "fails-to-start" => Ok(K3sBehaviour::FailsToStart),
        None if text == "hangs-on-start" => Ok(K3sBehaviour::HangsOnStart),
        Some(("slow-to-start", seconds)) => seconds
            .parse()
            .map(K3sBehaviour::SlowToStart)
            .map_err(|_| format!("slow-to-start needs whole seconds, not {seconds:?}")),
        _ => Err(format!(
            "unknown behaviour {text:?}: healthy, fails-to-start, hangs-on-start or slow-to-start:SECONDS"
        )),
    }
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Release {
            dir,
            version,
            behaviour,
            size,
        } => match write_release(&dir, &version, &k3s_binary(&version, behaviour, size)) {
            Ok(digest) => {
                println!("{digest}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!(
                    "k3sfleet-standin-k3s: writing {version} to {}: {err}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
        Command::Unit { role, dir } => {
            let (name, text) = k3s_unit(&role);
            let path = dir.join(name);
            match std::fs::write(&path, text) {
                Ok(()) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("k3sfleet-standin-k3s: writing {}: {err}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
