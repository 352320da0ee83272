//! The install in progress, recorded before the binary is swapped.
//!
//! If the agent (or the host) dies after the swap but before the restarted
//! service was verified, this record tells the next run that the service
//! still has to be restarted and checked, and rolled back if unhealthy,
//! instead of taking the binary in place as done; it also names the binary
//! that was there before, so an install cut off before the swap can be told
//! from one cut off after it (see `settle.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "k3s-install.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallIntent {
    pub version: String,
    pub sha256: String,
    /// The binary in place when the install began ("" for none); `None` in
    /// records written by agents that did not keep it.
    #[serde(default)]
    pub previous_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot record the install in progress in {path}")]
pub struct IntentError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, Clone)]
pub struct IntentFile {
    path: PathBuf,
}

impl IntentFile {
    pub fn new(state_dir: &Path) -> Self {
        IntentFile {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The recorded intent; a missing or unreadable file is none.
    pub fn read(&self) -> Option<InstallIntent> {
        let bytes = std::fs::read(&self.path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the intent atomically and durably.
    pub fn write(&self, intent: &InstallIntent) -> Result<(), IntentError> {
        let error = |source| IntentError {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(error)?;
        let tmp = self.tmp_path();
        let bytes = serde_json::to_vec(intent).map_err(|e| error(std::io::Error::other(e)))?;
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(error)
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Removes the temporary file of a write cut off before its rename (the
    /// record itself, if any, is whole: it is only ever renamed into place).
    pub fn remove_leftover(&self) -> bool {
        std::fs::remove_file(self.tmp_path()).is_ok()
    }

    fn tmp_path(&self) -> PathBuf {
        self.path.with_extension("json.tmp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_older_ones_without_the_previous_digest_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = IntentFile::new(dir.path());
        assert_eq!(file.read(), None);
        let intent = InstallIntent {
            version: "v1.31.5+k3s1".into(),
            sha256: "ab".repeat(32),
            previous_sha256: Some(String::new()),
        };
        file.write(&intent).unwrap();
        assert_eq!(file.read(), Some(intent));
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"version":"v1.31.5+k3s1","sha256":"cd"}"#,
        )
        .unwrap();
        assert_eq!(file.read().unwrap().previous_sha256, None);
        file.clear();
        assert_eq!(file.read(), None);
        std::fs::write(dir.path().join("k3s-install.json.tmp"), "{\"vers").unwrap();
        assert!(file.remove_leftover());
        assert!(!file.remove_leftover());
    }
}
