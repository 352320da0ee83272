//! The `k3sfleet` man pages and shell completions, from its clap definition.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use k3sfleet_coordinator::cli::Cli;

/// The binary the assets describe.
const BIN: &str = "k3sfleet";
/// The shells packages ship completions for, with the file name each
/// shell's completion loader looks for.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "k3sfleet.bash"),
    (Shell::Zsh, "_k3sfleet"),
    (Shell::Fish, "k3sfleet.fish"),
];

#[derive(Debug, Default)]
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes `dir/man/*.1` (one page per command and subcommand) and
/// `dir/completions/*`, replacing what an earlier run left there.
pub fn write(dir: &Path) -> anyhow::Result<Written> {
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    for sub in [&man_dir, &completions_dir] {
        if sub.exists() {
            std::fs::remove_dir_all(sub).with_context(|| format!("removing {}", sub.display()))?;
        }
        std::fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    // generate_to builds the command itself (with the help subcommand
    // disabled); building it here first would add pages for `help`.
    clap_mangen::generate_to(Cli::command(), &man_dir)
        .with_context(|| format!("writing man pages into {}", man_dir.display()))?;
    let mut written = Written {
        man_pages: sorted_files(&man_dir)?,
        ..Written::default()
    };
    for (shell, file_name) in SHELLS {
        let path = completions_dir.join(file_name);
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), BIN, &mut file);
        written.completions.push(path);
    }
    Ok(written)
}

fn sorted_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_command_and_subcommand_has_a_man_page_and_no_help_pseudo_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        let pages = names(&written.man_pages);
        let mut expected = vec!["k3sfleet.1".to_string()];
        fn walk(prefix: &str, command: &clap::Command, out: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = format!("{prefix}-{}", sub.get_name());
                out.push(format!("{name}.1"));
                walk(&name, sub, out);
            }
        }
        walk(BIN, &Cli::command(), &mut expected);
        expected.sort();
        assert_eq!(pages, expected);
        assert!(pages.contains(&"k3sfleet-drain.1".to_string()));
        assert!(!pages.iter().any(|p| p.contains("-help")), "{pages:?}");

        let drain = std::fs::read_to_string(dir.path().join("man/k3sfleet-drain.1")).unwrap();
        assert!(
            drain.starts_with(".ie \\n(.g .ds Aq"),
            "not roff: {drain:.80}"
        );
        assert!(drain.contains("PodDisruptionBudget"), "{drain}");
        assert!(drain.contains("delete\\-emptydir\\-data"), "{drain}");
    }

    #[test]
    fn completions_know_the_subcommands_and_their_flags() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        assert_eq!(
            names(&written.completions),
            ["k3sfleet.bash", "_k3sfleet", "k3sfleet.fish"]
        );
        for path in &written.completions {
            let script = std::fs::read_to_string(path).unwrap();
            for word in ["uncordon", "upgrade", "delete-emptydir-data"] {
                assert!(script.contains(word), "{} lacks {word}", path.display());
            }
        }
        let bash = std::fs::read_to_string(&written.completions[0]).unwrap();
        assert!(bash.contains("complete -F _k3sfleet"), "{bash}");
    }

    #[test]
    fn a_second_run_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("man")).unwrap();
        std::fs::write(dir.path().join("man/stale.1"), "old").unwrap();
        let written = write(dir.path()).unwrap();
        assert!(!dir.path().join("man/stale.1").exists());
        assert_eq!(
            written.man_pages.len(),
            write(dir.path()).unwrap().man_pages.len()
        );
    }
}
