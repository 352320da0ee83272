//! The host the agent manages, seen through a configurable root directory so
//! tests can run real agents against a sandboxed host.

mod facts;
mod figures;

use std::path::{Path, PathBuf};

use k3sfleet_daemon::config::{self, ConfigError};
use serde::Deserialize;

pub use facts::HostFacts;
pub use figures::HostFigureSampler;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Every host path the agent reads or writes is resolved under this root.
    #[serde(default = "default_root")]
    pub root: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            root: default_root(),
        }
    }
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

impl HostConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !self.root.is_dir() {
            return Err(config::invalid(
                path,
                "host.root",
                format!("{} is not a directory", self.root.display()),
            ));
        }
        Ok(())
    }
}

/// Resolves absolute host paths under the configured root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot(root.into())
    }

    /// `/etc/os-release` under the root.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let relative = host_path
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(host_path.as_ref());
        self.0.join(relative)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_resolve_under_the_root() {
        let root = HostRoot::new("/tmp/host");
        assert_eq!(
            root.path("/etc/os-release"),
            PathBuf::from("/tmp/host/etc/os-release")
        );
        assert_eq!(
            HostRoot::new("/").path("/etc/os-release"),
            PathBuf::from("/etc/os-release")
        );
    }
}
