//! `k3s etcd-snapshot save --name N` on a real-tier server: a real snapshot
//! of the local member (`etcdctl snapshot save` over client TLS, as K3s takes
//! it), stored as K3s stores it, `<N>-<node>-<unix time>` in
//! /var/lib/rancher/k3s/server/db/snapshots, and K3s's log lines.

use std::path::PathBuf;
use std::process::Command;

use super::{K3sLayout, RealHostConfig};
use crate::real::log;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("this host is not a K3s server: it has no etcd member")]
    NotAServer,
    #[error("cannot create {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Run {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcdctl snapshot save failed: {stderr}")]
    Failed { stderr: String },
}

/// Saves a snapshot; returns its full name.
pub fn save(
    config: &RealHostConfig,
    layout: &K3sLayout,
    name: &str,
    unix_time: u64,
) -> Result<String, SnapshotError> {
    if config.server.is_none() {
        return Err(SnapshotError::NotAServer);
    }
    let dir = layout.snapshots();
    std::fs::create_dir_all(&dir).map_err(|source| SnapshotError::Directory {
        path: dir.clone(),
        source,
    })?;
    let full_name = format!("{name}-{}-{unix_time}", config.node);
    let file = dir.join(&full_name);
    log::info(&format!(
        "Saving etcd snapshot to /var/lib/rancher/k3s/server/db/snapshots/{full_name}"
    ));
    let tls = layout.etcd_tls();
    let program = config.binary("etcdctl");
    let output = Command::new(&program)
        .arg("--endpoints=https://127.0.0.1:2379")
        .arg(format!("--cacert={}", tls.join("server-ca.crt").display()))
        .arg(format!("--cert={}", tls.join("client.crt").display()))
        .arg(format!("--key={}", tls.join("client.key").display()))
        .arg("--command-timeout=60s")
        .args(["snapshot", "save"])
        .arg(&file)
        .output()
        .map_err(|source| SnapshotError::Run {
            program: program.clone(),
            source,
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&file);
        return Err(SnapshotError::Failed {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    log::info(&format!("Snapshot {full_name} saved."));
    Ok(full_name)
}
