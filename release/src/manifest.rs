//! The release manifest: what one signature vouches for.

use serde::{Deserialize, Serialize};

use crate::{assets_for, is_release_tag};

/// The manifest's name beside the release's assets.
pub const MANIFEST_NAME: &str = "k3sfleet-release.json";
/// Its minisign signature (minisign's default name for a signature of it).
pub const SIGNATURE_NAME: &str = "k3sfleet-release.json.minisig";
/// The one manifest format there is; a reader refuses any other.
pub const FORMAT: &str = "k3sfleet-release/v1";
/// Manifests are a few hundred bytes; nothing this big is one.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// One K3s release as the operator signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The K3s release tag, e.g. v1.31.5+k3s1.
    pub version: String,
    /// One entry per architecture, sorted by architecture.
    pub artifacts: Vec<Artifact>,
}

/// The binary of one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Kubernetes spelling: amd64, arm64, arm, s390x.
    pub arch: String,
    /// The release asset's name (k3s, k3s-arm64, ...).
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the release manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("the release manifest is not valid JSON of the k3sfleet-release/v1 format: {0}")]
    Syntax(String),
    #[error("the release manifest's format is {0:?}, not {FORMAT:?}")]
    Format(String),
    #[error("the release manifest's version {0:?} is not a K3s release tag")]
    Version(String),
    #[error("the release manifest names no artifact")]
    Empty,
    #[error("the release manifest's entry for {arch:?} is invalid: {reason}")]
    Artifact { arch: String, reason: String },
}

impl Manifest {
    /// A manifest of `version` with `artifacts`, checked and sorted.
    pub fn new(version: &str, mut artifacts: Vec<Artifact>) -> Result<Self, ManifestError> {
        artifacts.sort_by(|a, b| a.arch.cmp(&b.arch));
        let manifest = Manifest {
            format: FORMAT.to_string(),
            version: version.to_string(),
            artifacts,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Reads and checks a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|err| ManifestError::Syntax(err.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest as it is signed: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        text.push('\n');
        text
    }

    /// The entry for `arch`, if the manifest has one.
    pub fn artifact(&self, arch: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.arch == arch)
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        if !is_release_tag(&self.version) {
            return Err(ManifestError::Version(self.version.clone()));
        }
        if self.artifacts.is_empty() {
            return Err(ManifestError::Empty);
        }
        for (i, artifact) in self.artifacts.iter().enumerate() {
            let invalid = |reason: String| ManifestError::Artifact {
                arch: artifact.arch.clone(),
                reason,
            };
            let Some(assets) = assets_for(&artifact.arch) else {
                return Err(invalid("not an architecture K3s publishes".into()));
            };
            if artifact.name != assets.binary {
                return Err(invalid(format!(
                    "the binary of {} is named {:?}, not {:?}",
                    artifact.arch, assets.binary, artifact.name
                )));
            }
            if artifact.sha256.len() != 64
                || !artifact
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid("sha256 is not 64 lowercase hex digits".into()));
            }
            if self.artifacts[..i].iter().any(|a| a.arch == artifact.arch) {
                return Err(invalid("listed twice".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(arch: &str, name: &str) -> Artifact {
        Artifact {
            arch: arch.into(),
            name: name.into(),
            size: 70_000_000,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn a_manifest_round_trips_through_its_json() {
        let manifest = Manifest::new(
            "v1.31.5+k3s1",
            vec![artifact("arm64", "k3s-arm64"), artifact("amd64", "k3s")],
        )
        .unwrap();
        assert_eq!(manifest.artifacts[0].arch, "amd64", "sorted");
        let parsed = Manifest::parse(manifest.to_json().as_bytes()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.artifact("arm64").unwrap().name, "k3s-arm64");
        assert!(parsed.artifact("s390x").is_none());
    }

    #[test]
    fn every_rule_refuses_with_its_reason() {
        let bad = |version: &str, artifacts: Vec<Artifact>| {
            Manifest::new(version, artifacts).unwrap_err().to_string()
        };
        assert!(bad("1.31", vec![artifact("amd64", "k3s")]).contains("release tag"));
        assert!(bad("v1.31.5+k3s1", vec![]).contains("no artifact"));
        assert!(bad("v1.31.5+k3s1", vec![artifact("amd64", "k3s-arm64")]).contains("named"));
        assert!(bad("v1.31.5+k3s1", vec![artifact("riscv64", "k3s")]).contains("architecture"));
        let mut upper = artifact("amd64", "k3s");
        upper.sha256 = "AB".repeat(32);
        assert!(bad("v1.31.5+k3s1", vec![upper]).contains("lowercase hex"));
        assert!(
            bad(
                "v1.31.5+k3s1",
                vec![artifact("amd64", "k3s"), artifact("amd64", "k3s")]
            )
            .contains("twice")
        );
        let other = r#"{"format":"k3sfleet-release/v9","version":"v1.31.5+k3s1","artifacts":[]}"#;
        assert!(matches!(
            Manifest::parse(other.as_bytes()),
            Err(ManifestError::Format(_))
        ));
        let extra =
            r#"{"format":"k3sfleet-release/v1","version":"v1.31.5+k3s1","artifacts":[],"x":1}"#;
        assert!(matches!(
            Manifest::parse(extra.as_bytes()),
            Err(ManifestError::Syntax(_))
        ));
    }
}
