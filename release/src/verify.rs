//! Checking a manifest's signature against the keys a host trusts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::manifest::{Artifact, Manifest, ManifestError};

/// One trusted public key.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// minisign's key id: 16 uppercase hex digits, as `minisign` prints it.
    pub id: String,
    key: minisign_verify::PublicKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a minisign public key (the base64 line of a .pub file, RWQ...)")]
pub struct KeyError {
    /// At most the first 60 characters of what was given (public, never a secret).
    pub given: String,
}

impl TrustedKey {
    /// Reads a public key: the base64 line alone, or a whole `.pub` file
    /// (an `untrusted comment:` line, then the base64 line).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let error = || KeyError {
            given: text.trim().chars().take(60).collect(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(error)?;
        let key = minisign_verify::PublicKey::from_base64(line).map_err(|_| error())?;
        let id = key_id(line).ok_or_else(error)?;
        Ok(TrustedKey { id, key })
    }
}

/// The key id inside a minisign public key or signature line (bytes 2..10,
/// little endian, shown as minisign shows it).
fn key_id(base64_line: &str) -> Option<String> {
    let bytes = STANDARD.decode(base64_line.trim()).ok()?;
    let id: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
    Some(format!("{:016X}", u64::from_le_bytes(id)))
}

/// The keys a host accepts release signatures from. Empty: releases are not verified.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature of {version}'s release manifest is not a minisign signature")]
    SignatureSyntax { version: String },
    #[error(
        "{version}'s release manifest is signed by key {key_id}, which this host does not trust (trusted: {trusted})"
    )]
    UntrustedKey {
        version: String,
        key_id: String,
        trusted: String,
    },
    #[error(
        "{version}'s release manifest does not match its signature by key {key_id}: it was altered, or signed by another key with the same id"
    )]
    BadSignature { version: String, key_id: String },
    #[error("{version}: {source}")]
    Manifest {
        version: String,
        #[source]
        source: ManifestError,
    },
    #[error("the signed release manifest is for {signed}, not {version}")]
    WrongVersion { version: String, signed: String },
    #[error("the signed release manifest of {version} has no binary for {arch}")]
    NoArtifact { version: String, arch: String },
    #[error(
        "{name} of {version} does not match the signed release manifest: {what} is {actual}, the manifest says {signed}"
    )]
    Mismatch {
        version: String,
        name: String,
        what: &'static str,
        actual: String,
        signed: String,
    },
}

/// A manifest whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// Which trusted key signed it.
    pub key_id: String,
    pub trusted_comment: String,
}

impl TrustedKeys {
    pub fn new(keys: Vec<TrustedKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Whether any key is trusted, that is, whether releases are verified.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted key ids, comma separated.
    pub fn ids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks that `signature` (a `.minisig` file's text) is a trusted key's
    /// signature of `manifest` and that the manifest is `version`'s.
    pub fn verify(
        &self,
        version: &str,
        manifest: &[u8],
        signature: &str,
    ) -> Result<Verified, VerifyError> {
        let syntax = || VerifyError::SignatureSyntax {
            version: version.to_string(),
        };
        let decoded = minisign_verify::Signature::decode(signature).map_err(|_| syntax())?;
        let key_id = signature
            .lines()
            .nth(1)
            .and_then(key_id)
            .ok_or_else(syntax)?;
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| VerifyError::UntrustedKey {
                    version: version.to_string(),
                    key_id: key_id.clone(),
                    trusted: self.ids(),
                })?;
        key.key
            .verify(manifest, &decoded, false)
            .map_err(|_| VerifyError::BadSignature {
                version: version.to_string(),
                key_id: key_id.clone(),
            })?;
        let parsed = Manifest::parse(manifest).map_err(|source| VerifyError::Manifest {
            version: version.to_string(),
            source,
        })?;
        if parsed.version != version {
            return Err(VerifyError::WrongVersion {
                version: version.to_string(),
                signed: parsed.version,
            });
        }
        Ok(Verified {
            manifest: parsed,
            key_id,
            trusted_comment: decoded.trusted_comment().to_string(),
        })
    }
}

impl Verified {
    /// The signed entry for `arch`.
    pub fn artifact(&self, arch: &str) -> Result<&Artifact, VerifyError> {
        self.manifest
            .artifact(arch)
            .ok_or_else(|| VerifyError::NoArtifact {
                version: self.manifest.version.clone(),
                arch: arch.to_string(),
            })
    }

    /// Checks a binary's name, size and SHA-256 (lowercase hex) against the
    /// signed entry for `arch`; `size` `None` when it is not known.
    pub fn check(
        &self,
        arch: &str,
        name: &str,
        size: Option<u64>,
        sha256: &str,
    ) -> Result<(), VerifyError> {
        let signed = self.artifact(arch)?;
        let mismatch = |what, actual: String, signed: String| VerifyError::Mismatch {
            version: self.manifest.version.clone(),
            name: name.to_string(),
            what,
            actual,
            signed,
        };
        if signed.name != name {
            return Err(mismatch("the name", name.into(), signed.name.clone()));
        }
        if let Some(size) = size
            && size != signed.size
        {
            return Err(mismatch(
                "the size",
                format!("{size} bytes"),
                format!("{} bytes", signed.size),
            ));
        }
        if !sha256.eq_ignore_ascii_case(&signed.sha256) {
            return Err(mismatch(
                "the sha256",
                sha256.to_ascii_lowercase(),
                signed.sha256.clone(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key and signature from minisign's own README (minisign-verify's test vector).
    const PUBLIC: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    #[test]
    fn keys_parse_from_a_line_or_a_pub_file_and_show_minisigns_id() {
        let key = TrustedKey::parse(PUBLIC).unwrap();
        assert_eq!(key.id, "E7620F1842B4E81F");
        let file = format!("untrusted comment: minisign public key E7620F1842B4E81F\n{PUBLIC}\n");
        assert_eq!(TrustedKey::parse(&file).unwrap().id, key.id);
        for bad in ["", "RWQ", "untrusted comment: x\n", "not base64 at all!"] {
            assert!(TrustedKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_keys_means_not_verified() {
        assert!(!TrustedKeys::default().enabled());
        assert!(TrustedKeys::new(vec![TrustedKey::parse(PUBLIC).unwrap()]).enabled());
    }

    #[test]
    fn garbage_signatures_are_refused_not_panicked_on() {
        let keys = TrustedKeys::new(vec![TrustedKey::parse(PUBLIC).unwrap()]);
        for garbage in [
            "",
            "x\ny\nz\nw",
            "untrusted comment: a\nRWQ\ntrusted comment: b\nAA==",
        ] {
            assert!(matches!(
                keys.verify("v1.31.5+k3s1", b"{}", garbage),
                Err(VerifyError::SignatureSyntax { .. })
            ));
        }
    }
}
