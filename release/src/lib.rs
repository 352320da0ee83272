//! Signed K3s releases: the operator's word on what hosts may install.
//!
//! An operator signs, with an offline key, a manifest of one K3s release:
//! its version and, per architecture, the binary's file name, size and
//! SHA-256. The signature is minisign's format (Ed25519 over the manifest's
//! BLAKE2b-512, with a signed trusted comment), so a third-party tool
//! (Debian's `minisign -V`) checks what k3sfleet signed and k3sfleet checks
//! what `minisign -S` signed. Agents hold the trusted public keys in their
//! config; with keys set, a binary is installed only when a manifest signed by
//! one of them names its version, architecture, size and digest, whatever
//! source (mirror, local directory, coordinator) it came from.
//!
//! The manifest and its signature travel beside the release's assets:
//! `<source>/<version>/k3sfleet-release.json` and `...json.minisig`.

mod assets;
mod manifest;
#[cfg(feature = "sign")]
pub mod sign;
mod verify;

#[cfg(all(test, feature = "sign"))]
mod robustness;

pub use assets::{ARCHITECTURES, Assets, assets_for};
pub use manifest::{Artifact, FORMAT, MANIFEST_NAME, Manifest, ManifestError, SIGNATURE_NAME};
pub use verify::{KeyError, TrustedKey, TrustedKeys, Verified, VerifyError};

/// Whether `version` looks like a K3s release tag (v1.31.5+k3s1, v1.32.0-rc1+k3s2).
pub fn is_release_tag(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let Some((semver, build)) = rest.split_once('+') else {
        return false;
    };
    let (core, pre) = semver.split_once('-').unwrap_or((semver, ""));
    let numbers: Vec<_> = core.split('.').collect();
    numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && pre.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        && build
            .strip_prefix("k3s")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
