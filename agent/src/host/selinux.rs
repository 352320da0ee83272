//! SELinux: whether it is enforcing, and the label K3s's binary needs.

use std::path::Path;

use super::HostRoot;
use super::tools::{HostTools, Tool, ToolError};

/// The label install.sh gives the K3s binary on SELinux hosts; without it
/// k3s fails to start under the container-selinux policy.
pub const K3S_BINARY_LABEL: [&str; 6] = [
    "-u",
    "system_u",
    "-r",
    "object_r",
    "-t",
    "container_runtime_exec_t",
];

/// True when `/sys/fs/selinux/enforce` says 1.
pub fn enforcing(root: &HostRoot) -> bool {
    std::fs::read_to_string(root.path("/sys/fs/selinux/enforce"))
        .is_ok_and(|text| text.trim() == "1")
}

#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    #[error("cannot relabel {path} for SELinux")]
    Tool {
        path: String,
        #[source]
        source: ToolError,
    },
    #[error("chcon refused to relabel {path}: {reason}")]
    Refused { path: String, reason: String },
}

/// Gives `file` the K3s binary's SELinux label.
pub async fn label_k3s_binary(tools: &HostTools, file: &Path) -> Result<(), RelabelError> {
    let mut args: Vec<&std::ffi::OsStr> = K3S_BINARY_LABEL.iter().map(|a| a.as_ref()).collect();
    args.push(file.as_os_str());
    let shown = file.display().to_string();
    let output = tools
        .run(Tool::Chcon, &args)
        .await
        .map_err(|source| RelabelError::Tool {
            path: shown.clone(),
            source,
        })?;
    if !output.success() {
        return Err(RelabelError::Refused {
            path: shown,
            reason: output.last_words(),
        });
    }
    Ok(())
}
