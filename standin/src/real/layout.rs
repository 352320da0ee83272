//! Where a K3s host keeps its control-plane files, under the host root: the
//! paths K3s itself uses (its server/ and agent/ directories), so that the
//! agent's `etcd.member` check and an operator's habits find them where they
//! would on a real server. The lab writes these files; the launcher reads them.

use std::path::{Path, PathBuf};

/// The K3s directories of one stand-in host root.
#[derive(Debug, Clone)]
pub struct K3sLayout {
    root: PathBuf,
}

impl K3sLayout {
    pub fn new(root: &Path) -> K3sLayout {
        K3sLayout {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// `/var/lib/rancher/k3s/server`.
    pub fn server_dir(&self) -> PathBuf {
        self.at("/var/lib/rancher/k3s/server")
    }

    /// `/var/lib/rancher/k3s/server/tls`: the cluster CA, the API server's
    /// serving certificate, the service-account key.
    pub fn server_tls(&self) -> PathBuf {
        self.server_dir().join("tls")
    }

    /// `/var/lib/rancher/k3s/server/tls/etcd`: the etcd CAs and certificates
    /// (`server-ca.crt`, `client.crt`, `client.key` are what `etcdctl`, the
    /// API server and the agent's health check use).
    pub fn etcd_tls(&self) -> PathBuf {
        self.server_tls().join("etcd")
    }

    /// `/var/lib/rancher/k3s/server/db/etcd`: the member's data directory.
    pub fn etcd_data(&self) -> PathBuf {
        self.server_dir().join("db/etcd")
    }

    /// `/var/lib/rancher/k3s/server/db/snapshots`: where `k3s etcd-snapshot save` writes.
    pub fn snapshots(&self) -> PathBuf {
        self.server_dir().join("db/snapshots")
    }

    /// `/var/lib/rancher/k3s/server/cred`: the control plane's kubeconfigs.
    pub fn server_cred(&self) -> PathBuf {
        self.server_dir().join("cred")
    }

    /// The audit policy K3s's docs put beside the server's files.
    pub fn audit_policy(&self) -> PathBuf {
        self.server_dir().join("audit.yaml")
    }

    /// `/var/lib/rancher/k3s/server/logs/audit.log`: every API request this server answered.
    pub fn audit_log(&self) -> PathBuf {
        self.server_dir().join("logs/audit.log")
    }

    /// `/var/lib/rancher/k3s/agent/kubelet.kubeconfig`: the node's own identity.
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.at("/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
    }

    /// The stand-in's own files (logs of each component, readiness).
    pub fn standin(&self) -> PathBuf {
        self.at("/.standin")
    }

    /// The real tier's host configuration ([`super::RealHostConfig`]).
    pub fn config(&self) -> PathBuf {
        self.standin().join("k3s-real.toml")
    }

    /// Written by the stand-in K3s script's caller: `LAUNCHER=<path>`.
    pub fn launcher_env(&self) -> PathBuf {
        self.standin().join("k3s-real.env")
    }

    /// One log per component (etcd, kube-apiserver, ...).
    pub fn component_log(&self, component: &str) -> PathBuf {
        self.standin().join("logs").join(format!("{component}.log"))
    }

    /// Holds a running component's pid (for tests and operators).
    pub fn component_pid(&self, component: &str) -> PathBuf {
        self.standin().join("run").join(format!("{component}.pid"))
    }

    /// Holds the launcher's pid once it has read its configuration.
    pub fn started_marker(&self) -> PathBuf {
        self.standin().join("k3s-real.started")
    }

    /// The stand-in systemctl's state file of `unit`.
    pub fn unit_state(&self, unit: &str) -> PathBuf {
        self.standin().join("units").join(unit)
    }
}
