//! Which file of a K3s release belongs to which architecture.

/// The binary asset and checksum file of one architecture (Kubernetes
/// spelling: amd64, arm64, arm, s390x), as K3s publishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub binary: &'static str,
    pub checksums: &'static str,
}

/// Every architecture K3s publishes a binary for.
pub const ARCHITECTURES: [&str; 4] = ["amd64", "arm64", "arm", "s390x"];

pub fn assets_for(arch: &str) -> Option<Assets> {
    let (binary, checksums) = match arch {
        "amd64" => ("k3s", "sha256sum-amd64.txt"),
        "arm64" => ("k3s-arm64", "sha256sum-arm64.txt"),
        "arm" => ("k3s-armhf", "sha256sum-arm.txt"),
        "s390x" => ("k3s-s390x", "sha256sum-s390x.txt"),
        _ => return None,
    };
    Some(Assets { binary, checksums })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_assets() {
        for arch in ARCHITECTURES {
            assert!(assets_for(arch).is_some(), "{arch}");
        }
        assert_eq!(assets_for("amd64").unwrap().binary, "k3s");
        assert_eq!(assets_for("arm").unwrap().checksums, "sha256sum-arm.txt");
        assert_eq!(assets_for("riscv64"), None);
    }
}
