//! The installed K3s binary and the previous one kept beside it for rollback.
//!
//! Every change is a rename within one directory, so at any instant the
//! target path holds either the old or the new complete binary, never
//! nothing and never a partial file:
//! - install: hard-link the current binary to `<target>.previous` (via a
//!   temporary name and a rename), then rename the verified download over
//!   the target;
//! - restore after a failed upgrade: hard-link `.previous` to a temporary
//!   name, rename it over the target (the failed binary is gone);
//! - rollback on request: exchange target and `.previous` atomically
//!   (renameat2 RENAME_EXCHANGE), so the rollback can itself be undone.
//!
//! Directory entries are synced after each change.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there is no previous K3s binary ({path}) to go back to")]
    NoPrevious { path: PathBuf },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SlotError + 'a {
    move |source| SlotError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

#[derive(Debug)]
pub struct BinarySlot {
    target: PathBuf,
    previous: PathBuf,
    /// SHA-256 per path, valid while the file's key is unchanged: hashing a
    /// 70 MB binary on every report would be wasteful.
    hashes: Mutex<HashMap<PathBuf, (FileKey, String)>>,
}

impl BinarySlot {
    /// `target` is the real path (already under the host root).
    pub fn new(target: PathBuf) -> Self {
        let mut previous = target.clone().into_os_string();
        previous.push(".previous");
        BinarySlot {
            target,
            previous: previous.into(),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn previous(&self) -> &Path {
        &self.previous
    }

    pub fn dir(&self) -> &Path {
        self.target.parent().unwrap_or(Path::new("/"))
    }

    pub fn has_previous(&self) -> bool {
        self.previous.is_file()
    }

    /// The SHA-256 of the file at `path`, `None` if there is none.
    pub async fn sha256_of(&self, path: &Path) -> Result<Option<String>, SlotError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io("inspect", path)(err)),
        };
        let key = FileKey::of(&meta);
        if let Some((cached, hash)) = self.lock().get(path)
            && *cached == key
        {
            return Ok(Some(hash.clone()));
        }
        let owned = path.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_file(&owned))
            .await
            .map_err(|join| io("hash", path)(std::io::Error::other(join)))?
            .map_err(io("hash", path))?;
        self.lock().insert(path.to_owned(), (key, hash.clone()));
        Ok(Some(hash))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileKey, String)>> {
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `.previous` a second name of the current binary (if any).
    pub fn keep_previous(&self) -> Result<bool, SlotError> {
        if !self.target.exists() {
            return Ok(false);
        }
        let staged = self.staging_name("previous");
        link_or_copy(&self.target, &staged)?;
        rename(&staged, &self.previous)?;
        sync_dir(self.dir())?;
        Ok(true)
    }

    /// Renames a verified file (in the same directory) over the target.
    pub fn install(&self, verified: &Path) -> Result<(), SlotError> {
        rename(verified, &self.target)?;
        sync_dir(self.dir())
    }

    /// Puts the previous binary back over the target, keeping `.previous`.
    pub fn restore_previous(&self) -> Result<(), SlotError> {
        if !self.has_previous() {
            return Err(SlotError::NoPrevious {
                path: self.previous.clone(),
            });
        }
        let staged = self.staging_name("restore");
        link_or_copy(&self.previous, &staged)?;
        rename(&staged, &self.target)?;
        sync_dir(self.dir())
    }

    /// Swaps the target and `.previous` atomically.
    pub fn exchange(&self) -> Result<(), SlotError> {
        if !self.has_previous() {
            return Err(SlotError::NoPrevious {
                path: self.previous.clone(),
            });
        }
        if !self.target.exists() {
            // Nothing to swap with: the previous binary simply comes back.
            rename(&self.previous, &self.target)?;
            return sync_dir(self.dir());
        }
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            &self.target,
            AT_FDCWD,
            &self.previous,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => {}
            // Filesystems without RENAME_EXCHANGE: three renames through a
            // hard link, so the target always exists.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                let staged = self.staging_name("exchange");
                link_or_copy(&self.target, &staged)?;
                rename(&self.previous, &self.target)?;
                rename(&staged, &self.previous)?;
            }
            Err(errno) => return Err(io("swap", &self.target)(errno.into())),
        }
        sync_dir(self.dir())
    }

    fn staging_name(&self, purpose: &str) -> PathBuf {
        self.dir().join(format!(
            ".k3sfleet-{purpose}-{:016x}.tmp",
            rand::random::<u64>()
        ))
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), SlotError> {
    std::fs::rename(from, to).map_err(io("rename into place", to))
}

/// A hard link, or on filesystems without them a synced copy with the same mode.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), SlotError> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let copied = std::fs::copy(from, to)
        .and_then(|_| std::fs::File::open(to))
        .and_then(|file| file.sync_all());
    if let Err(err) = copied {
        let _ = std::fs::remove_file(to);
        return Err(io("copy to", to)(err));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with(dir: &Path, current: Option<&str>) -> BinarySlot {
        let slot = BinarySlot::new(dir.join("k3s"));
        if let Some(content) = current {
            std::fs::write(slot.target(), content).unwrap();
        }
        slot
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn install_keeps_the_previous_binary_and_restore_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot_with(dir.path(), Some("old"));
        let new = dir.path().join(".new.tmp");
        std::fs::write(&new, "new").unwrap();
        assert!(slot.keep_previous().unwrap());
        slot.install(&new).unwrap();
        assert_eq!(read(slot.target()), "new");
        assert_eq!(read(slot.previous()), "old");
        slot.restore_previous().unwrap();
        assert_eq!(read(slot.target()), "old");
        assert_eq!(read(slot.previous()), "old");
        // Nothing but the two names is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn exchange_swaps_and_can_be_undone() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot_with(dir.path(), Some("b"));
        std::fs::write(slot.previous(), "a").unwrap();
        slot.exchange().unwrap();
        assert_eq!(
            (read(slot.target()), read(slot.previous())),
            ("a".into(), "b".into())
        );
        slot.exchange().unwrap();
        assert_eq!(
            (read(slot.target()), read(slot.previous())),
            ("b".into(), "a".into())
        );
    }

    #[test]
    fn without_a_previous_binary_there_is_nothing_to_go_back_to() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot_with(dir.path(), Some("only"));
        assert!(matches!(
            slot.restore_previous(),
            Err(SlotError::NoPrevious { .. })
        ));
        assert!(matches!(slot.exchange(), Err(SlotError::NoPrevious { .. })));
        assert_eq!(read(slot.target()), "only");
    }

    #[tokio::test]
    async fn hashes_are_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot_with(dir.path(), Some("abc"));
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(slot.sha256_of(slot.target()).await.unwrap().unwrap(), abc);
        assert_eq!(slot.sha256_of(slot.target()).await.unwrap().unwrap(), abc);
        let new = dir.path().join("x");
        std::fs::write(&new, "abcd").unwrap();
        slot.install(&new).unwrap();
        assert_ne!(slot.sha256_of(slot.target()).await.unwrap().unwrap(), abc);
        assert_eq!(
            slot.sha256_of(&dir.path().join("none")).await.unwrap(),
            None
        );
    }
}
