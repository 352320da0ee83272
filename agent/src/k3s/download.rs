//! Streaming a K3s binary into a temporary file beside its target, hashing it
//! on the way, and keeping it only if it is complete, synced and verified.
//!
//! The temporary file lives in the target's directory so the final rename is
//! atomic (same filesystem). If the agent dies mid-download the leftover is
//! removed by [`remove_leftovers`] before the next install; the installed
//! binary is never touched by a download.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::fetch::{ArtifactReader, FetchError};

/// Temporary downloads are named `.k3sfleet-download-<random>.tmp`.
const TEMP_PREFIX: &str = ".k3sfleet-download-";
const TEMP_SUFFIX: &str = ".tmp";
/// Every temporary file of the agent beside the binary starts so.
const LEFTOVER_PREFIX: &str = ".k3sfleet-";

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("cannot write the download to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {name} of {version} from {source_name}: {against} says sha256 {expected}, the download has {actual}; the download was discarded"
    )]
    Checksum {
        name: String,
        version: String,
        source_name: String,
        against: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{name} of {version} from {source_name} is larger than the {size} bytes {against} says; the download was discarded"
    )]
    TooLarge {
        name: String,
        version: String,
        source_name: String,
        against: String,
        size: u64,
    },
}

/// What a download must be: its digest and, when a signed manifest says,
/// its size, and which document said so (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub version: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: Option<u64>,
    /// "sha256sum-amd64.txt", "the release manifest signed by key ...".
    pub against: String,
}

impl DownloadError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DownloadError::Fetch(fetch) if fetch.is_transient())
    }
}

/// A verified binary in its temporary file. Removed on drop unless installed.
#[derive(Debug)]
pub struct Downloaded {
    path: PathBuf,
    pub sha256: String,
    pub size: u64,
    keep: bool,
}

impl Downloaded {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Call once the file has been renamed into place.
    pub fn installed(mut self) {
        self.keep = true;
    }
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams `reader` into a new temporary file in `dir`, then checks its
/// SHA-256 (and size, when known) against `expected`; a download growing past
/// the expected size is cut off. The file is executable (0755) and synced to
/// disk when this returns Ok.
pub async fn download(
    mut reader: ArtifactReader,
    source_name: &str,
    dir: &Path,
    expected: &Expected,
    stall: Duration,
) -> Result<Downloaded, DownloadError> {
    let path = dir.join(format!(
        "{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}",
        rand::random::<u64>()
    ));
    let write_error = |source| DownloadError::Write {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .map_err(write_error)?;
    // From here on the guard removes the file on every early return.
    let mut guard = Downloaded {
        path: path.clone(),
        sha256: String::new(),
        size: 0,
        keep: false,
    };
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    while let Some(chunk) = reader.next_chunk(stall).await? {
        hasher.update(&chunk);
        // Small blocking writes: the page cache absorbs them; the one slow
        // call (sync_all) runs on the blocking pool below.
        writer.write_all(&chunk).map_err(write_error)?;
        guard.size += chunk.len() as u64;
        if let Some(size) = expected.size
            && guard.size > size
        {
            return Err(DownloadError::TooLarge {
                name: reader.name().to_string(),
                version: expected.version.clone(),
                source_name: source_name.to_string(),
                against: expected.against.clone(),
                size,
            });
        }
    }
    let file = writer
        .into_inner()
        .map_err(|err| write_error(err.into_error()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(write_error)?;
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|join| write_error(std::io::Error::other(join)))?
        .map_err(write_error)?;
    let actual = hex::encode(hasher.finalize());
    if actual != expected.sha256 {
        return Err(DownloadError::Checksum {
            name: reader.name().to_string(),
            version: expected.version.clone(),
            source_name: source_name.to_string(),
            against: expected.against.clone(),
            expected: expected.sha256.clone(),
            actual,
        });
    }
    guard.sha256 = actual;
    Ok(guard)
}

/// Removes the temporary files an agent that died mid-way left in `dir`:
/// downloads, and the second names the binary swap stages before a rename
/// (`.k3sfleet-<purpose>-<random>.tmp`, see `binary.rs`). Returns how many
/// it removed.
pub fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(LEFTOVER_PREFIX) && name.ends_with(TEMP_SUFFIX)
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_downloads_and_swaps_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".k3sfleet-download-00ff.tmp",
            ".k3sfleet-previous-0a0b.tmp",
            "k3s",
            "k3s.previous",
            "kubectl",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_leftovers(dir.path()), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["k3s", "k3s.previous", "kubectl"]);
    }
}
