//! The real test tier's K3s: on a stand-in host whose `.standin/k3s-real.toml`
//! exists, the stand-in K3s binary runs `k3sfleet-standin-k3s-real` instead
//! of the stand-in kubelet. On a server it runs a member of the lab's
//! three-member etcd cluster, kube-apiserver on it, kube-controller-manager
//! and kube-scheduler (all built from upstream modules by
//! scripts/build-testbed.sh); on every host KWOK as the node's kubelet.
//! `k3s etcd-snapshot save` takes a real etcd snapshot.

mod components;
mod config;
mod layout;
pub mod log;
pub mod node;
pub mod snapshot;
mod supervisor;

pub use components::{Component, components};
pub use config::{ConfigError, RealHostConfig, ServerConfig};
pub use layout::K3sLayout;
pub use supervisor::{LaunchError, run};
