//! K3s releases as published: tags, asset names per architecture, checksum
//! files, and what `k3s --version` prints.

/// The one rule both sides of the protocol use for a version string.
pub use k3sfleet_proto::is_release_tag;

/// Asset names per architecture: the same table signed manifests use.
pub use k3sfleet_release::{Assets, assets_for};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumFileError {
    #[error("the checksum file has no line for {asset}")]
    Missing { asset: String },
    #[error("the checksum file's line for {asset} is not a SHA-256 digest: {line:?}")]
    Malformed { asset: String, line: String },
}

/// The lowercase hex SHA-256 of `asset` in a coreutils `sha256sum` file
/// (`<64 hex>  <name>`, or `<64 hex> *<name>` in binary mode). Like
/// install.sh, the line must end in the asset's exact name.
pub fn checksum_for(text: &str, asset: &str) -> Result<String, ChecksumFileError> {
    let line = text
        .lines()
        .map(str::trim_end)
        .find(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|name| name.trim_start_matches('*') == asset)
        })
        .ok_or_else(|| ChecksumFileError::Missing {
            asset: asset.to_string(),
        })?;
    let digest = line.split_whitespace().next().unwrap_or_default();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChecksumFileError::Malformed {
            asset: asset.to_string(),
            line: line.chars().take(120).collect(),
        });
    }
    Ok(digest.to_ascii_lowercase())
}

/// The release tag in `k3s --version` output
/// (`k3s version v1.31.4+k3s1 (a1b2c3d4)` then `go version ...`).
pub fn parse_version_output(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("k3s version ")?;
        let tag = rest.split_whitespace().next()?;
        is_release_tag(tag).then(|| tag.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_tags() {
        for good in ["v1.31.5+k3s1", "v1.32.0-rc1+k3s2", "v1.30.10+k3s12"] {
            assert!(is_release_tag(good), "{good}");
        }
        for bad in [
            "1.31.5+k3s1",
            "v1.31+k3s1",
            "v1.31.5",
            "v1.31.5+k3s1/../x",
            "",
        ] {
            assert!(!is_release_tag(bad), "{bad}");
        }
    }

    #[test]
    fn checksum_lines_are_matched_by_exact_asset_name() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = format!(
            "{a}  k3s-airgap-images-amd64.tar.gz\n{b}  k3s\n{a}  k3s-arm64\n{a} *k3s-s390x\n"
        );
        assert_eq!(checksum_for(&text, "k3s").unwrap(), "b".repeat(64));
        assert_eq!(checksum_for(&text, "k3s-arm64").unwrap(), a);
        assert_eq!(checksum_for(&text, "k3s-s390x").unwrap(), a);
        assert_eq!(
            checksum_for(&text, "k3s-armhf"),
            Err(ChecksumFileError::Missing {
                asset: "k3s-armhf".into()
            })
        );
        assert!(matches!(
            checksum_for("xyz  k3s\n", "k3s"),
            Err(ChecksumFileError::Malformed { .. })
        ));
    }

    #[test]
    fn version_output() {
        let out = "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n";
        assert_eq!(parse_version_output(out).as_deref(), Some("v1.31.4+k3s1"));
        assert_eq!(parse_version_output("garbage\n"), None);
    }
}
