//! A directory moved onto a tmpfs of a fixed size: a host whose disk fills.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A tmpfs mounted over a directory, holding what the directory held.
/// Unmounted when dropped (lazily: processes may still hold files there).
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a `size`-byte tmpfs over `dir` and copies `dir`'s files onto it.
    pub fn mount_over(dir: &Path, size: u64) -> anyhow::Result<SmallDisk> {
        let stash = tempfile::tempdir()?;
        copy_files(dir, stash.path())?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("k3sfleet-small-disk")
            .arg(dir))?;
        let disk = SmallDisk {
            dir: dir.to_owned(),
        };
        copy_files(stash.path(), dir)?;
        Ok(disk)
    }

    /// Makes the disk `size` bytes, keeping its files (as freeing space would).
    pub fn resize(&self, size: u64) -> anyhow::Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir))
    }

    /// The names of the files on it.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Copies the regular files of `from` into `to`, permissions included.
fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().context("running mount")?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
