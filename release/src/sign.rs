//! The operator's side: a key pair, and signing a release directory.
//!
//! Keys are minisign's: the secret key box is scrypt-encrypted with a
//! password unless asked otherwise, and `minisign -S -s KEY` can sign with
//! it as well; the public key is the `.pub` file `minisign -V -p` reads.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{Artifact, Manifest, ManifestError};
use crate::{ARCHITECTURES, assets_for, is_release_tag};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0:?} is not a K3s release tag like v1.31.5+k3s1")]
    Version(String),
    #[error("{dir} holds no K3s binary (k3s, k3s-arm64, k3s-armhf, k3s-s390x)")]
    NoBinary { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{name} does not match {checksums} in {dir}: its sha256 is {actual}, the file says {listed}"
    )]
    Checksum {
        dir: PathBuf,
        name: String,
        checksums: String,
        actual: String,
        listed: String,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the secret key cannot be used: {0}")]
    Key(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// How a new secret key is protected.
#[derive(Debug)]
pub enum Protection {
    /// Encrypted (scrypt) with this password, as `minisign -G` does.
    Password(String),
    /// Encrypted with a password asked for on the terminal.
    Prompt,
    /// Not encrypted: for a key kept on an encrypted offline medium.
    None,
}

/// A new key pair as the text of its two files (`.key`, `.pub`).
pub fn generate(protection: Protection) -> Result<(String, String), SignError> {
    let pair = match protection {
        Protection::Password(password) => {
            minisign::KeyPair::generate_encrypted_keypair(Some(password))
        }
        Protection::Prompt => minisign::KeyPair::generate_encrypted_keypair(None),
        Protection::None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|err| SignError::Key(err.to_string()))?;
    let secret = pair
        .sk
        .to_box(Some("k3sfleet release signing key"))
        .map_err(|err| SignError::Key(err.to_string()))?
        .into_string();
    let public = pair
        .pk
        .to_box()
        .map_err(|err| SignError::Key(err.to_string()))?
        .into_string();
    Ok((secret, public))
}

/// The base64 line of a `.pub` file's text: what agents put in their config.
pub fn public_key_line(public_file: &str) -> Option<&str> {
    public_file
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
}

/// Hashes the binaries of `version` in `dir` (any of k3s, k3s-arm64,
/// k3s-armhf, k3s-s390x that are there) into a manifest. Where the release's
/// `sha256sum-<arch>.txt` is there too, the binary must match it.
pub fn manifest_of_dir(dir: &Path, version: &str) -> Result<Manifest, SignError> {
    if !is_release_tag(version) {
        return Err(SignError::Version(version.to_string()));
    }
    let mut artifacts = Vec::new();
    for arch in ARCHITECTURES {
        let assets = assets_for(arch).expect("a known architecture");
        let path = dir.join(assets.binary);
        if !path.is_file() {
            continue;
        }
        let (size, sha256) = hash_file(&path)?;
        let checksums = dir.join(assets.checksums);
        if checksums.is_file() {
            let text = std::fs::read_to_string(&checksums).map_err(|source| SignError::Read {
                path: checksums.clone(),
                source,
            })?;
            if let Some(listed) = listed_digest(&text, assets.binary)
                && listed != sha256
            {
                return Err(SignError::Checksum {
                    dir: dir.to_owned(),
                    name: assets.binary.to_string(),
                    checksums: assets.checksums.to_string(),
                    actual: sha256,
                    listed,
                });
            }
        }
        artifacts.push(Artifact {
            arch: arch.to_string(),
            name: assets.binary.to_string(),
            size,
            sha256,
        });
    }
    if artifacts.is_empty() {
        return Err(SignError::NoBinary {
            dir: dir.to_owned(),
        });
    }
    Ok(Manifest::new(version, artifacts)?)
}

/// The digest a `sha256sum` file lists for `name`, lowercased.
fn listed_digest(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let digest = fields.next()?;
        (fields.next()?.trim_start_matches('*') == name).then(|| digest.to_ascii_lowercase())
    })
}

fn hash_file(path: &Path) -> Result<(u64, String), SignError> {
    let read = |source| SignError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Signs `data` with the secret key in `secret_file` (its text); `password`
/// for an encrypted key (without it, an encrypted key's password is asked
/// for on the terminal). Returns the `.minisig` file's text.
pub fn sign(
    secret_file: &str,
    password: Option<String>,
    data: &[u8],
    trusted_comment: &str,
) -> Result<String, SignError> {
    let sk_box = minisign::SecretKeyBox::from_string(secret_file)
        .map_err(|err| SignError::Key(err.to_string()))?;
    let sk = match password {
        Some(password) => sk_box.into_secret_key(Some(password)),
        // An encrypted key without a password given: minisign asks on the terminal.
        None => sk_box
            .clone()
            .into_unencrypted_secret_key()
            .or_else(|_| sk_box.into_secret_key(None)),
    }
    .map_err(|err| SignError::Key(err.to_string()))?;
    let pk = minisign::PublicKey::from_secret_key(&sk).ok();
    let signature = minisign::sign(
        pk.as_ref(),
        &sk,
        data,
        Some(trusted_comment),
        Some("k3sfleet release manifest signature"),
    )
    .map_err(|err| SignError::Sign(err.to_string()))?;
    Ok(signature.into_string())
}

/// Whether the secret key file's text is password-protected (or unreadable
/// without one: a corrupted key then fails when it signs).
pub fn is_encrypted(secret_file: &str) -> Result<bool, SignError> {
    let sk_box = minisign::SecretKeyBox::from_string(secret_file)
        .map_err(|err| SignError::Key(err.to_string()))?;
    Ok(sk_box.into_unencrypted_secret_key().is_err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TrustedKey, TrustedKeys, VerifyError};

    #[test]
    fn what_is_signed_verifies_and_anything_changed_does_not() {
        let (secret, public) = generate(Protection::None).unwrap();
        let keys = TrustedKeys::new(vec![TrustedKey::parse(&public).unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k3s"), b"binary").unwrap();
        let manifest = manifest_of_dir(dir.path(), "v1.31.5+k3s1").unwrap();
        assert_eq!(manifest.artifacts.len(), 1);
        assert_eq!(manifest.artifacts[0].size, 6);
        let json = manifest.to_json();
        let signature = sign(&secret, None, json.as_bytes(), "k3sfleet v1.31.5+k3s1").unwrap();
        let verified = keys
            .verify("v1.31.5+k3s1", json.as_bytes(), &signature)
            .unwrap();
        assert_eq!(verified.trusted_comment, "k3sfleet v1.31.5+k3s1");
        verified
            .check("amd64", "k3s", Some(6), &manifest.artifacts[0].sha256)
            .unwrap();
        assert!(matches!(
            verified.check("amd64", "k3s", Some(6), &"0".repeat(64)),
            Err(VerifyError::Mismatch {
                what: "the sha256",
                ..
            })
        ));
        assert!(matches!(
            verified.check("arm64", "k3s-arm64", None, &"0".repeat(64)),
            Err(VerifyError::NoArtifact { .. })
        ));
        assert!(matches!(
            keys.verify("v1.31.6+k3s1", json.as_bytes(), &signature),
            Err(VerifyError::WrongVersion { .. })
        ));
        let altered = json.replace("\"size\": 6", "\"size\": 7");
        assert!(matches!(
            keys.verify("v1.31.5+k3s1", altered.as_bytes(), &signature),
            Err(VerifyError::BadSignature { .. })
        ));
        let (_, stranger) = generate(Protection::None).unwrap();
        let others = TrustedKeys::new(vec![TrustedKey::parse(&stranger).unwrap()]);
        assert!(matches!(
            others.verify("v1.31.5+k3s1", json.as_bytes(), &signature),
            Err(VerifyError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let (secret, _) = generate(Protection::Password("correct horse".into())).unwrap();
        assert!(is_encrypted(&secret).unwrap());
        assert!(sign(&secret, Some("wrong".into()), b"x", "c").is_err());
        sign(&secret, Some("correct horse".into()), b"x", "c").unwrap();
        let (plain, _) = generate(Protection::None).unwrap();
        assert!(!is_encrypted(&plain).unwrap());
    }

    #[test]
    fn a_binary_that_disagrees_with_its_checksum_file_is_not_signed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k3s"), b"binary").unwrap();
        std::fs::write(
            dir.path().join("sha256sum-amd64.txt"),
            format!("{}  k3s\n", "0".repeat(64)),
        )
        .unwrap();
        assert!(matches!(
            manifest_of_dir(dir.path(), "v1.31.5+k3s1"),
            Err(SignError::Checksum { .. })
        ));
        assert!(matches!(
            manifest_of_dir(tempfile::tempdir().unwrap().path(), "v1.31.5+k3s1"),
            Err(SignError::NoBinary { .. })
        ));
    }
}
