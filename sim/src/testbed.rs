//! Where scripts/build-testbed.sh puts the real tier's third-party binaries
//! (the Kubernetes control plane, etcd, KWOK, Tailscale, Headscale).

use std::path::{Path, PathBuf};

/// `$K3SFLEET_TESTBED_BIN`, else `$K3SFLEET_TESTBED_DIR/bin`, else the
/// script's default, .cache/testbed/bin in this repository.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("K3SFLEET_TESTBED_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("K3SFLEET_TESTBED_DIR").map(|dir| PathBuf::from(dir).join("bin"))
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/testbed/bin"))
}

/// The resolved path of one built binary, or which is missing and the
/// build-testbed.sh tool sets that build it.
pub fn binary(name: &str, tool_sets: &str) -> Result<PathBuf, String> {
    let path = bin_dir().join(name);
    match std::fs::canonicalize(&path) {
        Ok(resolved) if resolved.is_file() => Ok(resolved),
        _ => Err(format!(
            "{} is missing: build it with scripts/build-testbed.sh {tool_sets}",
            path.display()
        )),
    }
}
