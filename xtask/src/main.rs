//! `cargo xtask`: tasks that run on the build host and ship in no binary.
//!
//! `cargo xtask cli-assets DIR` writes the `k3sfleet` man pages and shell
//! completions, generated from the CLI's clap definition. An xtask rather
//! than a build script or a `k3sfleet completions` subcommand because:
//! a build script cannot see `Cli` (it lives in the crate being built); the
//! pages come from the very type the binary parses with, so they cannot
//! drift; nothing runs the target binary, so cross-built packages work; and
//! clap_mangen / clap_complete stay out of the shipped binaries.

mod cli_assets;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write the k3sfleet man pages (DIR/man/*.1) and shell completions
    /// (DIR/completions/: k3sfleet.bash, _k3sfleet for zsh, k3sfleet.fish).
    CliAssets {
        /// Output directory; its man/ and completions/ are replaced
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::CliAssets { dir } => {
            let written = cli_assets::write(&dir)?;
            println!(
                "wrote {} man pages and {} completion scripts under {}",
                written.man_pages.len(),
                written.completions.len(),
                dir.display()
            );
        }
    }
    Ok(())
}
