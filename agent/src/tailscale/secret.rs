//! A secret in a short-lived file only root can read: created 0600 in a
//! 0700 directory (never a looser mode, not even for an instant), removed
//! on drop.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write a private file in {dir}")]
pub struct SecretFileError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
}

impl SecretFile {
    pub fn create(dir: &Path, name: &str, secret: &str) -> Result<Self, SecretFileError> {
        let error = |source| SecretFileError {
            dir: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(error)?;
        // An existing directory keeps its mode: tighten it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        let path = dir.join(format!("{name}-{:016x}", rand::random::<u64>()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(error)?;
        let secret_file = SecretFile { path };
        file.write_all(secret.as_bytes()).map_err(error)?;
        Ok(secret_file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn private_while_it_lives_and_gone_after() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let path = {
            let file = SecretFile::create(&secrets, "key", "s3cret").unwrap();
            assert_eq!(
                std::fs::metadata(file.path()).unwrap().mode() & 0o777,
                0o600
            );
            assert_eq!(std::fs::metadata(&secrets).unwrap().mode() & 0o777, 0o700);
            assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "s3cret");
            file.path().to_owned()
        };
        assert!(!path.exists());
    }
}
