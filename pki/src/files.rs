//! Reading and writing PEM files.
//!
//! Writes are atomic (temporary file beside the target, fsync, rename, fsync
//! of the directory) so a crash never leaves a half-written key or
//! certificate. Private keys are created 0600 and never overwrite an existing
//! file unless asked to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; remove it first or pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} is not valid PEM")]
    BadPem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
}

/// Reads every certificate in a PEM file, in order.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FileError::BadPem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(FileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let bytes = read(path)?;
    // The key's bytes never reach the error: only the path does.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => FileError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => FileError::BadPem {
            path: path.to_owned(),
            source,
        },
    })
}

/// Atomically writes a secret (a private key) with mode 0600.
pub fn write_private_file(path: &Path, contents: &str, overwrite: bool) -> Result<(), FileError> {
    write_atomically(path, contents.as_bytes(), 0o600, overwrite)
}

/// Atomically writes a public file (a certificate) with mode 0644.
pub fn write_public_file(path: &Path, contents: &str, overwrite: bool) -> Result<(), FileError> {
    write_atomically(path, contents.as_bytes(), 0o644, overwrite)
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), FileError> {
    let write_err = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    if !overwrite && path.exists() {
        return Err(FileError::Exists {
            path: path.to_owned(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        file_name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let result = (|| {
        // The mode is set at creation, so a secret is never readable by others,
        // not even for an instant.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_and_not_overwritten_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        write_private_file(&path, "first", false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let err = write_private_file(&path, "second", false).unwrap_err();
        assert!(matches!(err, FileError::Exists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");

        write_private_file(&path, "second", true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }

    #[test]
    fn reading_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let err = read_certificates(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not pem at all\n").unwrap();
        let err = read_certificates(&empty).unwrap_err();
        assert!(matches!(err, FileError::NoCertificate { .. }), "{err}");
        let err = read_private_key(&empty).unwrap_err();
        assert!(matches!(err, FileError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }
}
