//! Reading secrets (tokens, auth keys) from a file or stdin, so they never
//! sit in a command line where process listings show them.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the {what} from {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} in {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
}

/// Reads a secret from `path`, or stdin when `path` is "-", trimmed. The
/// secret itself never appears in an error.
pub fn read_secret(path: &Path, what: &'static str) -> Result<String, SecretError> {
    let read_err = |source| SecretError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_err)?;
    } else {
        text = std::fs::read_to_string(path).map_err(read_err)?;
    }
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(SecretError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trimmed_and_refuses_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  k3sfleet.secret\n").unwrap();
        assert_eq!(read_secret(&path, "token").unwrap(), "k3sfleet.secret");
        std::fs::write(&path, "\n").unwrap();
        let err = read_secret(&path, "token").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
