//! The install in progress, recorded before the binary is swapped.
//!
//! If the agent dies after the swap but before the restarted service was
//! verified, the next run of the same install finds the binary already in
//! place; this record tells it that the service still has to be restarted
//! and checked (and rolled back if unhealthy) instead of answering "no-op".

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "k3s-install.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallIntent {
    pub version: String,
    pub sha256: String,
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
        let tmp = self.path.with_extension("json.tmp");
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
}
